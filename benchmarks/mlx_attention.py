"""One layer's causal attention on MLX: plain `mx.fast.scaled_dot_product_attention` against the MLX
backend's chunked FlashAttention-2 (backends/mlx/attention.py), same inputs, same run.

    python -m benchmarks.mlx_attention [--lengths 512,2048,8192] [--heads 9 --kv-heads 3 --head-dim 64]

Per length: forward and forward+backward seconds (best of --repeats), MLX's peak memory above the
inputs, the ratios ours/plain, and the largest difference of the output and of dq, dk, dv; ours
as an uncompiled gradient runs it and compiled, as the backend runs long rows on a CPU; and, when
they are built, the whole-row attention on twinlora's CPU kernels (backends/mlx/cpu_kernels), which
holds the scores as mx.fast does. `--exp` times the CPU exponentials alone (MLX's exp and power, ours, numpy). The
shapes default to SmolLM2-135M's (the embedded model). Lengths whose plain scores would not fit in
--plain-max-gib are run on ours only.
"""
from __future__ import annotations

import argparse
import time


def _timed(fn, repeats: int) -> float:
    import mlx.core as mx
    mx.eval(fn())                                   # warm-up (compiles the element-wise kernels)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        mx.eval(fn())
        best = min(best, time.perf_counter() - t)
    return best


def _peak(fn) -> float:
    import mlx.core as mx
    mx.synchronize()
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    mx.eval(fn())
    return (mx.get_peak_memory() - base) / 2 ** 20


def attention_inputs(L: int, heads: int, kv_heads: int, head_dim: int):
    """Seeded q, k, v and an upstream gradient w for one causal attention of L tokens."""
    import mlx.core as mx
    keys = iter(mx.random.split(mx.random.key(0), 4))
    q = mx.random.normal((1, heads, L, head_dim), key=next(keys))
    k, v = (mx.random.normal((1, kv_heads, L, head_dim), key=next(keys)) for _ in range(2))
    w = mx.random.normal((1, heads, L, head_dim), key=next(keys))
    mx.eval(q, k, v, w)
    return q, k, v, w


def _with_kernels(sdpa, q, k, v, scale):
    from backends.mlx import cpu_kernels
    with cpu_kernels.switched_on():         # as inside cpu_kernels.in_model
        return sdpa(q, k, v, scale=scale, mask="causal")


def measure(L: int, heads: int, kv_heads: int, head_dim: int, repeats: int, plain_max_gib: float) -> dict:
    import mlx.core as mx
    import numpy as np

    from backends.mlx.attention import flash_attention
    from common.training.longseq import ATTENTION_CHUNK
    q, k, v, w = attention_inputs(L, heads, kv_heads, head_dim)
    scale = head_dim ** -0.5
    runs = {"ours": lambda q, k, v: flash_attention(q, k, v, scale, "causal", ATTENTION_CHUNK)[0],
            "ours, compiled": lambda q, k, v: flash_attention(q, k, v, scale, "causal", ATTENTION_CHUNK,
                                                              exp="poly")[0]}
    if 3.5 * heads * L * L * 4 / 2 ** 30 <= plain_max_gib:
        runs["mx.fast"] = lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")
        from backends.mlx import cpu_kernels
        if cpu_kernels.available():        # the whole-row attention on the kernels' softmax (backends/mlx/cpu_kernels)
            kernel_sdpa = cpu_kernels.attention(None)
            runs["CPU kernels"] = lambda q, k, v: _with_kernels(kernel_sdpa, q, k, v, scale)
    out = {"L": L}
    for name, f in runs.items():
        grad = mx.value_and_grad(lambda q, k, v: (f(q, k, v) * w).sum(), argnums=(0, 1, 2))
        if name == "ours, compiled":        # as the MLX backend runs a long step on a CPU (common/models/devices.py)
            grad = mx.compile(grad)
        out[name] = {"fwd_s": _timed(lambda: f(q, k, v), repeats),
                     "fwd_bwd_s": _timed(lambda: grad(q, k, v), repeats),
                     "peak_mib": _peak(lambda: grad(q, k, v)),
                     "values": [np.array(f(q, k, v))] + [np.array(g) for g in grad(q, k, v)[1]]}
    if "mx.fast" in out:
        for name in [n for n in ("ours", "ours, compiled", "CPU kernels") if n in out]:
            out[name]["max_diff"] = max(float(np.abs(a - b).max())
                                        for a, b in zip(out[name]["values"], out["mx.fast"]["values"]))
    return out


def exponentials(n: int = 2304 * 4096, repeats: int = 3) -> None:
    """e^(s − m) over one chunk's worth of scores: MLX's exp and power, the fused polynomial the
    chunked attention uses on a CPU, numpy; ns per float and the largest relative error (float64)."""
    import mlx.core as mx
    import numpy as np

    from backends.mlx.attention import _exp_fused_cpu, _exp_power_cpu
    rng = np.random.default_rng(0)
    s = (rng.standard_normal(n) * 4).astype(np.float32)
    m = np.float32(s.max())
    ref = np.exp(s.astype(np.float64) - np.float64(m))
    xs, xm = mx.array(s), mx.array([float(m)])
    runs = {"mx.exp": lambda: mx.exp(xs - xm), "mx.power(2, x·log2 e)": lambda: _exp_power_cpu(xs, xm),
            "ours (polynomial, squarings)": lambda: _exp_fused_cpu(xs, xm)}
    print(f"| e^x over {n:,} floats | ns per float | max relative error |\n|---|---:|---:|")
    for name, fn in runs.items():
        t = _timed(fn, repeats)
        err = np.abs(np.array(fn()).astype(np.float64) - ref)[ref > 1e-30] / ref[ref > 1e-30]
        print(f"| {name} | {t / n * 1e9:.2f} | {err.max():.1e} |", flush=True)
    t = time.perf_counter()
    for _ in range(repeats):
        np.exp(s - m)
    print(f"| numpy | {(time.perf_counter() - t) / repeats / n * 1e9:.2f} | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="512,2048,8192")
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--plain-max-gib", type=float, default=12.0)
    ap.add_argument("--exp", action="store_true", help="time the CPU exponentials instead")
    args = ap.parse_args()
    from backends.mlx.blas import preload_fast_blas
    preload_fast_blas()
    import mlx.core as mx

    from common.models.heap import reuse_freed_memory
    reuse_freed_memory()                            # as the MLX backend does on a CPU (common/models/heap.py)
    if args.exp:
        exponentials()
        return
    print(f"device {mx.default_device()}; heads {args.heads}, kv heads {args.kv_heads}, head dim {args.head_dim}")
    print("| L | run | forward s | fwd+bwd s | peak MiB | fwd+bwd vs mx.fast | peak vs mx.fast | max |Δ| out, dq, dk, dv |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for L in sorted(int(x) for x in args.lengths.split(",")):
        r = measure(L, args.heads, args.kv_heads, args.head_dim, args.repeats, args.plain_max_gib)
        plain = r.get("mx.fast")
        for name in ("mx.fast", "ours", "ours, compiled", "CPU kernels"):
            if name == "CPU kernels" and name not in r and "mx.fast" in r:
                continue                    # not built here
            if name not in r:
                print(f"| {L} | {name} | not run (scores over --plain-max-gib) | | | | | |")
                continue
            m = r[name]
            ratio = (f"{m['fwd_bwd_s'] / plain['fwd_bwd_s']:.2f}×", f"{m['peak_mib'] / plain['peak_mib']:.2f}×") \
                if plain and name != "mx.fast" else ("", "")
            diff = f"{m['max_diff']:.1e}" if "max_diff" in m else ""
            print(f"| {L} | {name} | {m['fwd_s']:.3f} | {m['fwd_bwd_s']:.3f} | {m['peak_mib']:.0f} | {ratio[0]} | "
                  f"{ratio[1]} | {diff} |", flush=True)


if __name__ == "__main__":
    main()
