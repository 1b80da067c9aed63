"""Long sequences: gradient checkpointing and the chunked LM-head loss change memory, not math.

On both backends, on the tiny model: the loss and every LoRA gradient with checkpointing on, and
with the head's loss forced into chunks, equal the plain computation; the two backends still agree
with both on; and MLX checkpointing stays scoped to the model that asked for it. MLX's chunked
(FlashAttention-2 style) attention: the same values and gradients as mx.fast's, one chunk's scores
at a time, and the layer recompute reusing the forward's attention.
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import backend_with_lora, loss_and_lora_grads
from common.training.longseq import attention_flops_per_token, loss_chunk_rows


def _batch(vocab: int):
    from common.training.batching import Batch
    rng = np.random.default_rng(3)
    ids = rng.integers(3, vocab, (2, 48)).astype(np.int32)
    ids[1, 40:] = 0                                   # padding on the second row
    mask = np.zeros(ids.shape, np.float32)
    mask[0, 20:] = 1
    mask[1, 25:40] = 1
    return Batch(ids, mask, int(mask[:, 1:].sum()), 48 + 40)


def _close(a, b, rtol=2e-5):
    sa, ga = a
    sb, gb = b
    assert sb == pytest.approx(sa, rel=rtol)
    assert sorted(ga) == sorted(gb) and len(ga) > 0
    for k in ga:
        scale = float(np.abs(ga[k]).max()) or 1.0
        assert np.abs(ga[k] - gb[k]).max() <= rtol * 10 * scale, k


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_checkpointing_and_chunked_loss_keep_loss_and_grads(backend, tiny_model, monkeypatch):
    from common.training.tokenize import load_tokenizer
    batch = _batch(len(load_tokenizer(tiny_model)))
    plain = loss_and_lora_grads(backend_with_lora(backend, tiny_model, grad_checkpointing=False), batch)
    assert any(np.abs(g).max() > 0 for k, g in plain[1].items() if "lora_A" in k)
    ckpt = backend_with_lora(backend, tiny_model, grad_checkpointing=True)
    if backend == "torch":                                                 # checkpointing really on
        assert any(getattr(m, "gradient_checkpointing", False) is True for m in ckpt.model.modules())
    else:
        from backends.mlx.checkpoint import is_checkpointed
        assert all(is_checkpointed(layer) for layer in ckpt.model.layers)
    _close(plain, loss_and_lora_grads(ckpt, batch))
    monkeypatch.setattr("common.training.longseq.LOSS_CHUNK_ELEMENTS", 7 * 400)   # chunks of 7 target rows
    monkeypatch.setattr("common.training.longseq.ATTENTION_CHUNK", 16)             # MLX: 3 query chunks of 16
    assert loss_chunk_rows(batch.n_targets, 400) == 7
    import backends.mlx.attention as att
    made, real = [], att.chunked
    monkeypatch.setattr(att, "chunked", lambda inner, c, *a: made.append(c) or real(inner, c, *a))
    _close(plain, loss_and_lora_grads(ckpt, batch))                            # checkpointed + chunked
    _close(plain, loss_and_lora_grads(backend_with_lora(backend, tiny_model, grad_checkpointing=False), batch))   # chunked only
    assert made == ([16, 16] if backend == "mlx" else [])                  # the chunked attention ran


@pytest.mark.parametrize("mask", ["causal", "array", "additive", None])
@pytest.mark.parametrize("compiled", [False, True])
def test_mlx_chunked_attention_is_the_same_attention(mask, compiled):
    """Uncompiled (`power` exponentials) and compiled as the backend's long steps (the fused
    polynomial ones): the values and gradients of mx.fast's attention."""
    import mlx.core as mx

    from backends.mlx.attention import chunked
    from mlx_lm.models.base import scaled_dot_product_attention as sdpa

    L = 40
    q, k, v = (mx.random.normal((1, h, L, 8), key=mx.random.key(i)) for i, h in enumerate((4, 2, 2)))
    m = {"causal": "causal", None: None,      # a sliding window of 8, as Gemma 3's local layers
         "array": (mx.arange(L)[:, None] >= mx.arange(L)[None]) & (mx.arange(L)[:, None] - mx.arange(L)[None] < 8),
         "additive": mx.where(mx.arange(L)[:, None] >= mx.arange(L)[None], 0.0, -1e9)[None, None]}[mask]
    f = chunked(sdpa, 16, exp="poly" if compiled else "power")

    def loss(fn, q, k, v):
        return (fn(q, k, v, cache=None, scale=0.3, mask=m) * mx.arange(8)).sum()
    want, got = sdpa(q, k, v, cache=None, scale=0.3, mask=m), f(q, k, v, cache=None, scale=0.3, mask=m)
    assert np.abs(np.array(want) - np.array(got)).max() < 1e-5
    grad = mx.grad(lambda q, k, v: loss(f, q, k, v), argnums=(0, 1, 2))
    gw = mx.grad(lambda q, k, v: loss(sdpa, q, k, v), argnums=(0, 1, 2))(q, k, v)
    gg = (mx.compile(grad) if compiled else grad)(q, k, v)
    for a, b in zip(gw, gg):
        assert np.abs(np.array(a) - np.array(b)).max() < 1e-4


def test_mlx_fused_exponential_against_float64():
    """The CPU exponential of the compiled path: within 2e-5 of float64 where it is kept, exactly
    zero below 2^-64 of the row's maximum, masked scores (−inf) included."""
    import mlx.core as mx

    from backends.mlx.attention import _exp_fused_cpu
    s = np.random.default_rng(0).uniform(-60, 0, 200_000).astype(np.float32)
    s[:3] = [-np.inf, -60.0, 0.0]
    m = float(s.max())
    with mx.stream(mx.cpu):
        got = np.array(_exp_fused_cpu(mx.array(s), mx.array(m))).astype(np.float64)
    ref = np.exp(s.astype(np.float64) - m)
    kept, dropped = ref > 2.0 ** -63, ref < 2.0 ** -64.5
    assert kept.sum() > 140_000 and dropped.sum() > 40_000
    assert np.max(np.abs(got[kept] - ref[kept]) / ref[kept]) < 2e-5
    assert np.all(got[dropped] == 0.0)


def test_mlx_layer_recompute_reuses_the_forward_attention(tiny_model, monkeypatch):
    """With checkpointed layers, each layer's recompute takes the forward's attention output and
    log-sum-exp (no third attention forward), and the loss and gradients stay those of no reuse."""
    from common.training.tokenize import load_tokenizer
    import backends.mlx.attention as att
    batch = _batch(len(load_tokenizer(tiny_model)))
    monkeypatch.setattr("common.training.longseq.ATTENTION_CHUNK", 16)
    plain = loss_and_lora_grads(backend_with_lora("mlx", tiny_model, grad_checkpointing=False), batch)
    calls, real = [], att.flash_attention
    monkeypatch.setattr(att, "flash_attention",
                        lambda *a, saved=None, **k: calls.append(saved is not None) or real(*a, saved=saved, **k))
    be = backend_with_lora("mlx", tiny_model, grad_checkpointing=True)
    n = len(be.model.layers)
    _close(plain, loss_and_lora_grads(be, batch))
    assert calls == [False] * n + [True] * n          # n forwards, then n recomputes that reused them
    assert att._saved is None                         # nothing kept after the step


def test_mlx_compiled_long_step_is_the_uncompiled_step(tiny_model, monkeypatch):
    """A step of long rows on a CPU is compiled (common/models/devices.py): the same loss and gradients as
    uncompiled, and after an optimizer update the next compiled step still sees the updated LoRA."""
    import mlx.core as mx

    import backends.mlx.attention as att
    from common.training.tokenize import load_tokenizer
    batch = _batch(len(load_tokenizer(tiny_model)))
    monkeypatch.setattr("common.training.longseq.ATTENTION_CHUNK", 16)
    compiles, real = [], mx.compile
    monkeypatch.setattr(mx, "compile", lambda *a, **k: compiles.append(1) or real(*a, **k))

    def two_steps(compiled_rows: int):
        monkeypatch.setattr(att, "COMPILED_ROWS", compiled_rows)
        be = backend_with_lora("mlx", tiny_model, grad_checkpointing=True)
        be.make_optimizer((0.9, 0.999), 1e-8, 0.0)
        loss, n = be.accumulate(batch)
        be.apply_gradients(1e-2, n, None)
        return loss, loss_and_lora_grads(be, batch)

    first, second = two_steps(10 ** 9)
    assert compiles == []
    first_c, second_c = two_steps(32)
    assert len(compiles) == 2                           # one compile per step
    assert first_c == pytest.approx(first, rel=2e-5)
    assert second[0] != pytest.approx(first, rel=1e-3)   # the update moved the loss
    _close(second, second_c)


def test_mlx_flash_attention_runs_one_chunk_at_a_time():
    """The backward recomputes one query chunk's scores at a time: MLX's peak above the inputs stays
    within a few chunks' worth (without the chunk-to-chunk dependencies it measured 71 MiB here)."""
    import mlx.core as mx

    from backends.mlx.attention import flash_attention
    L, C = 2048, 256
    q, k, v = (mx.random.normal((1, h, L, 16), key=mx.random.key(i)) for i, h in enumerate((4, 2, 2)))
    w = mx.random.normal((1, 4, L, 16), key=mx.random.key(9))
    mx.eval(q, k, v, w)
    grad = mx.grad(lambda q, k, v: (flash_attention(q, k, v, 0.25, "causal", C)[0] * w).sum(), argnums=(0, 1, 2))
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    mx.eval(grad(q, k, v))
    one_chunk = 4 * C * L * 4                           # one chunk's float32 scores, all heads
    assert mx.get_peak_memory() - before < 6 * one_chunk


def test_backends_agree_with_checkpointing_and_chunks(tiny_model, monkeypatch):
    from common.training.tokenize import load_tokenizer
    batch = _batch(len(load_tokenizer(tiny_model)))
    monkeypatch.setattr("common.training.longseq.LOSS_CHUNK_ELEMENTS", 5 * 400)
    mlx = loss_and_lora_grads(backend_with_lora("mlx", tiny_model, grad_checkpointing=True), batch)
    torch_ = loss_and_lora_grads(backend_with_lora("torch", tiny_model, grad_checkpointing=True), batch)
    _close(mlx, torch_, rtol=1e-4)


def test_mlx_checkpointing_is_scoped_to_its_model(tiny_model):
    from backends.mlx.checkpoint import checkpoint_layers, is_checkpointed
    on = backend_with_lora("mlx", tiny_model, grad_checkpointing=True)
    off = backend_with_lora("mlx", tiny_model, grad_checkpointing=False)
    assert all(is_checkpointed(layer) for layer in on.model.layers)
    assert not any(is_checkpointed(layer) for layer in off.model.layers)   # mlx-lm's patch would leak here
    assert type(off.model.layers[0]) is not type(on.model.layers[0])
    assert checkpoint_layers(on.model.layers) == 0                         # idempotent: no double wrap
    assert checkpoint_layers(off.model.layers) == len(off.model.layers)


def test_loss_chunk_rows_and_attention_flops():
    assert loss_chunk_rows(1000, 49152, limit=1 << 26) is None
    assert loss_chunk_rows(4500, 49152, limit=1 << 26) == (1 << 26) // 49152 == 1365
    assert loss_chunk_rows(10, 100, limit=50) == 1           # a row wider than the limit: one row per chunk
    # SmolLM2-135M at 8192 tokens: 6·L·layers·heads·head_dim = 6·8192·30·9·64 ≈ 0.85 GFLOP per token
    # (causal half), more than the 4·N weight FLOPs (0.54 GFLOP): attention outweighs the weights there.
    assert attention_flops_per_token(8192, 30, 9, 64) == 6 * 8192 * 30 * 9 * 64


# ---------------------------------------------------------------- bench --lengths
def test_watchdog_kills_over_the_memory_limit_and_on_time(tmp_path):
    import sys

    from benchmarks.longseq import watch
    hog = "import time\nb = []\nfor _ in range(40):\n    b.append(bytearray(20 << 20)); time.sleep(0.05)\ntime.sleep(30)"
    status, _, peak = watch([sys.executable, "-c", hog], {}, tmp_path / "hog.log", 60, 200 << 20)
    assert status == "oom" and 200 << 20 < peak < 700 << 20
    status, _, _ = watch([sys.executable, "-c", "import time; time.sleep(30)"], {}, tmp_path / "slow.log", 1, 1 << 40)
    assert status == "timeout"
    status, rc, _ = watch([sys.executable, "-c", "print('ok')"], {}, tmp_path / "ok.log", 60, 1 << 40)
    assert (status, rc) == (None, 0) and (tmp_path / "ok.log").read_text() == "ok\n"


def _row(L, run, gc, rss, tok_s, flops_per_tok, status="ok"):
    r = {"length": L, "run": run, "backend": "mlx" if "mlx" in run else "torch", "gc": gc, "status": status,
         "note": None, "watch_peak": 11 << 30 if status == "oom" else None}
    if status == "ok":
        r.update(tok_s=tok_s, step_s=L / tok_s, flops=flops_per_tok * L, time=L / tok_s, rss=rss, fw=None, loss=2.0)
    return r


def test_sweep_figures_and_report():
    from benchmarks.longseq import _finish_rows, done_lines, plot_sweep, plan, render_sweep
    G = 2 ** 30
    rows = [_row(512, "ours-torch", True, 1 * G, 100.0, 1e9), _row(512, "trl", True, 2 * G, 50.0, 1e9),
            _row(8192, "ours-torch", True, 2 * G, 90.0, 2e9), _row(8192, "trl", True, 5 * G, 40.0, 2e9),
            _row(8192, "trl", False, 0, 0, 0, status="oom")]
    calib = {"torch": {"gflops": 200.0}, "mlx": {"gflops": 100.0}}
    _finish_rows(rows, calib, {})
    o512, o8k, t8k = rows[0], rows[2], rows[3]
    assert o512["mfu"] == pytest.approx(1e9 * 100 / 200e9) and o512["speed_vs_plain"] == pytest.approx(2.0)
    assert o8k["rss_vs_plain"] == pytest.approx(0.4) and o8k["mfu_vs_first"] == pytest.approx(1.8)
    assert o8k["marginal_per_token"] == pytest.approx(G / (8192 - 512))
    res = {"model": "m", "facts": {"params_total": 1, "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 4,
                                   "n_trainable": 1, "flops_per_token": 1e9},
           "calibration": calib, "lengths": [512, 8192], "steps": 1, "warmup": 1, "long_from": 4096,
           "mem_limit_gib": 10.0, "rank": 8, "targets": ["q_proj"], "rows": rows, "date": "d", "cpus": 2}
    md = render_sweep(res)
    assert "| 8192 | trl | off | OOM >10 GiB (killed at 11264 MiB) |" in md
    assert "| 8192 | ours-torch | on | 90.0 | 2.25× |" in md
    assert ("- ours-torch with checkpointing: peak RSS 2048 MiB = 0.40× trl with checkpointing (5120 MiB)"
            in done_lines(res))
    assert "- ours-torch with checkpointing: MFU 90.0 % = 1.80× its MFU at 512 tokens" in done_lines(res)
    assert plot_sweep(res)[:8] == b"\x89PNG\r\n\x1a\n"
    cells = plan([512, 2048, 8192], [("ours-mlx", "mlx"), ("mlx-lm", "mlx")])
    assert cells[:4] == [(512, "ours-mlx", "mlx", True), (512, "mlx-lm", "mlx", True),
                         (8192, "ours-mlx", "mlx", True), (8192, "mlx-lm", "mlx", True)]
    assert cells[-1] == (8192, "mlx-lm", "mlx", False) and len(cells) == len(set(cells)) == 12


def test_bench_lengths_end_to_end(tiny_model, tmp_path):
    """The sweep on the tiny model, MLX runs only (4 processes); a rerun reuses every cell."""
    import json

    from helpers import run_cli
    out = tmp_path / "long"
    args = ("bench", "--model", tiny_model, "--lengths", "40", "--backend", "mlx", "--steps", "1", "--warmup", "0",
            "--threads", "1", "--output", out)
    r = run_cli(*args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "longseq.json").read_text())
    got = {(x["run"], x["gc"]): x for x in res["rows"]}
    assert sorted(got) == [("mlx-lm", False), ("mlx-lm", True), ("ours-mlx", False), ("ours-mlx", True)]
    assert all(x["status"] == "ok" and x["rss"] > 0 and x["mfu"] > 0 for x in got.values())
    # the same example, the same LoRA init, one step: ours and mlx-lm, with or without checkpointing
    losses = [x["loss"] for x in got.values()]
    assert max(losses) - min(losses) < 1e-4
    assert (out / "longseq.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 40 | ours-mlx | on |" in (out / "longseq.md").read_text()
    r = run_cli(*args)
    assert r.exit_code == 0 and r.output.count("reused (ok)") == 4, r.output
