"""Where one MLX training step goes, op by op, beside torch's profile of the same batch.

MLX has no per-op profiler on a CPU, so each op of a decoder layer is timed alone at the step's
shapes, forward + backward (the gradient w.r.t. its input, as in the step), and multiplied by the
layer count; next to it the whole step (our backend's `accumulate`) and torch's
`torch.profiler` table of its own `accumulate` on the same batch.

    python -m benchmarks.mlx_step_profile [--model embedded --batch 4 --lengths 128,512,1024 --reps 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def median_seconds(f, reps: int) -> float:
    """Median seconds of `f()` (which evaluates its result), after one warm-up call."""
    f()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def _batch(tokenizer_vocab: int, batch: int, length: int):
    from common.training.batching import Batch
    rng = np.random.default_rng(0)
    ids = rng.integers(3, tokenizer_vocab - 1, size=(batch, length)).astype(np.int32)
    mask = np.zeros_like(ids, dtype=np.float32)
    mask[:, length // 2:] = 1.0              # the second half is the answer
    return Batch(ids, mask, int(mask[:, 1:].sum()), ids.size)


def _backend(name: str, model: str):
    from backends import get_backend
    from common.adapters.format import init_lora_weights, spec_from_config
    from common.config.schema import LoraConfig
    from common.models.resolve import resolve_model
    be = get_backend(name)(resolve_model(model))
    spec, modules = spec_from_config(LoraConfig(),
                                     be.linear_modules(), be.num_hidden_layers(), model)
    be.attach_lora(spec, modules, init_lora_weights(spec, modules, 0))
    be.make_optimizer((0.9, 0.999), 1e-8, 0.0)
    return be


def mlx_ops(be, batch: int, length: int, reps: int) -> dict[str, float]:
    """Seconds per step of each op kind (one layer's forward + backward × layers), and the head."""
    import mlx.core as mx
    import mlx.nn as nn
    from backends.mlx.attention import chunked
    from common.training.longseq import ATTENTION_CHUNK
    m = be.model
    layer, n_layers = m.model.layers[0], len(m.model.layers)
    a = layer.self_attn
    d, heads, kv = m.args.hidden_size, a.n_heads, a.n_kv_heads
    hd = d // heads
    x = mx.random.normal((batch, length, d))
    q = mx.random.normal((batch, heads, length, hd))
    k = mx.random.normal((batch, kv, length, hd))

    def grad_of(f, *xs):
        g = mx.grad(lambda *xs: (f(*xs) * 1.0).sum(), argnums=tuple(range(len(xs))))
        return lambda: mx.eval(g(*xs))

    plain = lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=hd ** -0.5, mask="causal")  # noqa
    sdpa = chunked(lambda q, k, v, cache=None, scale=1.0, mask=None, sinks=None:
                   mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask), ATTENTION_CHUNK, "power")
    ops = {
        "q,k,v,o projections (q,v with LoRA)": grad_of(lambda x: a.q_proj(x).sum(-1) + a.k_proj(x).sum(-1)
                                                       + a.v_proj(x).sum(-1) + a.o_proj(x).sum(-1), x),
        "MLP gate/up/down matmuls (+ one add)": grad_of(
            lambda x: layer.mlp.down_proj(layer.mlp.gate_proj(x) + layer.mlp.up_proj(x)), x),
        "SwiGLU (silu(gate)·up)": grad_of(lambda g, u: nn.silu(g) * u, *[mx.random.normal(
            (batch, length, m.args.intermediate_size)) for _ in range(2)]),
        "RMSNorm ×2 (mx.fast)": grad_of(lambda x: layer.input_layernorm(x) + layer.post_attention_layernorm(x), x),
        "RoPE q,k (mx.fast)": grad_of(lambda q, k: a.rope(q).sum(1) + a.rope(k).sum(1), q, k),
        "attention mx.fast SDPA": grad_of(lambda q, k, v: plain(q, k, v), q, k, k),
        "attention chunked (ours, >256 tokens)": grad_of(lambda q, k, v: sdpa(q, k, v, scale=hd ** -0.5, mask="causal"),
                                                          q, k, k),
    }
    out = {name: median_seconds(f, reps) * n_layers for name, f in ops.items()}
    from backends.mlx.backend import _head_loss
    h = mx.random.normal((batch * length // 2, d))
    y = mx.array(np.random.default_rng(0).integers(0, m.args.vocab_size, batch * length // 2).astype(np.int32))
    out["LM head + cross-entropy (targets only)"] = median_seconds(grad_of(lambda h: _head_loss(m, h, y), h), reps)
    return out


def _mlx_step(be, b) -> None:
    be.accumulate(b)
    be._grads = None


def _torch_step(be, b) -> None:
    be.accumulate(b)
    be.optimizer.zero_grad(set_to_none=True)


def torch_ops(be, b, reps: int, top: int = 12) -> list[tuple[str, float]]:
    """torch.profiler's self-CPU seconds per op of one `accumulate` (median step of `reps`)."""
    from torch.profiler import ProfilerActivity, profile
    _torch_step(be, b)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            _torch_step(be, b)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return [(e.key, e.self_cpu_time_total / 1e6 / reps) for e in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lengths", default="128,512,1024")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    from backends.mlx.blas import preload_fast_blas
    preload_fast_blas()
    mlx_be, torch_be = _backend("mlx", a.model), _backend("torch", a.model)
    vocab = mlx_be.model.args.vocab_size
    for L in map(int, a.lengths.split(",")):
        b = _batch(vocab, a.batch, L)
        steps = {"mlx": median_seconds(lambda: _mlx_step(mlx_be, b), a.reps),
                 "torch": median_seconds(lambda: _torch_step(torch_be, b), a.reps)}
        print(f"\n### batch {a.batch} × {L} tokens: whole step (forward + backward) mlx {steps['mlx']:.3f} s, "
              f"torch {steps['torch']:.3f} s (median of {a.reps})\n")
        print("| MLX op (alone, × layers) | s per step | share of MLX step |\n|---|---:|---:|")
        for name, s in mlx_ops(mlx_be, a.batch, L, a.reps).items():
            print(f"| {name} | {s:.3f} | {s / steps['mlx']:.0%} |")
        print("\n| torch op (profiler, self CPU) | s per step | share of torch step |\n|---|---:|---:|")
        for name, s in torch_ops(torch_be, b, a.reps):
            print(f"| {name} | {s:.3f} | {s / steps['torch']:.0%} |")


if __name__ == "__main__":
    main()
