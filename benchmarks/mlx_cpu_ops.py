"""The element-wise ops of a LoRA step, MLX against torch on the same CPU and the same arrays.

Why the MLX step trails torch's on a CPU although MLX's matmul is the faster of the two: MLX's CPU
backend runs each op on one thread (only BLAS uses more) and calls scalar libm for `exp`
(mlx#1218, mlx#2185), where torch splits element-wise ops over its threads and vectorises them.
A third column, when they are built, times twinlora's CPU kernels for the same op
(backends/mlx/cpu_kernels: the SiLU rows as the kernel's silu(x)·1, the loss rows through its
log-sum-exp, as the backend runs them). Each row times one op (forward, or forward + gradient) on the shapes of SmolLM2's loss head and MLP,
median of `--reps`, and prints MLX / torch time; run it at 1 and 2 threads to see the scaling:

    OMP_NUM_THREADS=1 python -m benchmarks.mlx_cpu_ops --targets 512
    OMP_NUM_THREADS=2 python -m benchmarks.mlx_cpu_ops --targets 512
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from benchmarks.mlx_step_profile import median_seconds

VOCAB, HIDDEN, MLP = 49152, 576, 1536       # SmolLM2-135M


def _median_ms(run, reps: int) -> float:
    return median_seconds(run, reps) * 1e3


def arrays(n: int) -> dict[str, np.ndarray]:
    """The same inputs for both frameworks: the tied head W, hidden rows h, targets y, MLP input x."""
    rng = np.random.default_rng(0)
    return {"W": rng.normal(0, 0.02, (VOCAB, HIDDEN)).astype(np.float32),
            "h": rng.normal(0, 1, (n, HIDDEN)).astype(np.float32),
            "y": rng.integers(0, VOCAB, n), "x": rng.normal(0, 1, (n, MLP)).astype(np.float32)}


def mlx_rows(n: int, reps: int, kernels: bool = False) -> dict[str, float]:
    """MLX's own ops, or (`kernels`) the same rows through twinlora's CPU kernels where the backend uses them."""
    from backends.mlx.blas import preload_fast_blas
    preload_fast_blas()
    import mlx.core as mx
    import mlx.nn as nn

    from backends.mlx import cpu_kernels
    a = arrays(n)
    W, h, x, y = mx.array(a["W"]), mx.array(a["h"]), mx.array(a["x"]), mx.array(a["y"].astype(np.int32))
    logits = h @ W.T
    mx.eval(W, h, y, x, logits)
    ce = lambda h: nn.losses.cross_entropy(h @ W.T, y, reduction="sum")   # noqa: E731
    if kernels:
        k, one = cpu_kernels.load(), mx.ones(x.shape)
        kce = lambda h: cpu_kernels.cross_entropy(h @ W.T, y, reduction="sum")   # noqa: E731
        ops = {
            "head matmul h·Wᵀ": lambda: h @ W.T,
            "log-sum-exp over the logits": lambda: k.logsumexp(logits),
            "head + cross-entropy, grad w.r.t. h": lambda: mx.grad(kce)(h),
            "SiLU forward": lambda: k.silu_mul(x, one),
            "SiLU forward + grad": lambda: mx.grad(lambda x: k.silu_mul(x, one).sum())(x),
        }
        with cpu_kernels.switched_on():      # as inside cpu_kernels.in_model
            return {name: _median_ms(lambda f=f: mx.eval(f()), reps) for name, f in ops.items()}
    ops = {
        "head matmul h·Wᵀ": lambda: h @ W.T,
        "exp over the logits": lambda: mx.exp(logits),
        "log-sum-exp over the logits": lambda: mx.logsumexp(logits, axis=-1),
        "head + cross-entropy, grad w.r.t. h": lambda: mx.grad(ce)(h),
        "SiLU forward": lambda: nn.silu(x),
        "SiLU forward + grad": lambda: mx.grad(lambda x: nn.silu(x).sum())(x),
    }
    return {name: _median_ms(lambda f=f: mx.eval(f()), reps) for name, f in ops.items()}


def torch_rows(n: int, reps: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    a = arrays(n)
    W, h0, x0, y = (torch.from_numpy(a[k]) for k in ("W", "h", "x", "y"))
    logits = h0 @ W.T

    def grad_of(f, a):
        a = a.clone().requires_grad_(True)
        f(a).backward()
        return a.grad

    ops = {
        "head matmul h·Wᵀ": lambda: h0 @ W.T,
        "exp over the logits": lambda: torch.exp(logits),
        "log-sum-exp over the logits": lambda: torch.logsumexp(logits, dim=-1),
        "head + cross-entropy, grad w.r.t. h": lambda: grad_of(lambda h: F.cross_entropy(h @ W.T, y, reduction="sum"), h0),
        "SiLU forward": lambda: F.silu(x0),
        "SiLU forward + grad": lambda: grad_of(lambda x: F.silu(x).sum(), x0),
    }
    with torch.no_grad():
        fwd = {k: _median_ms(f, reps) for k, f in ops.items() if "grad" not in k}
    return {**fwd, **{k: _median_ms(f, reps) for k, f in ops.items() if "grad" in k}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=512, help="rows through the head (loss targets) and the MLP")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    # torch first: once MLX has loaded OpenBLAS, torch's threads fight it (jobs/study.py)
    t, m = torch_rows(args.targets, args.reps), mlx_rows(args.targets, args.reps)
    from backends.mlx import cpu_kernels
    kern = mlx_rows(args.targets, args.reps, kernels=True) if cpu_kernels.available() else {}
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    print(f"{args.targets} rows, vocab {VOCAB}, MLP width {MLP}; threads: {threads}; median of {args.reps}, ms"
          + ("" if kern else f"; CPU kernels: {cpu_kernels.why_not()}"))
    print("| op | MLX ms | torch ms | MLX / torch | MLX + CPU kernels ms | kernels / torch |\n|---|---:|---:|---:|---:|---:|")
    for k in m:
        kk = f"{kern[k]:.1f} | {kern[k] / t[k]:.2f}×" if k in kern else "— | —"
        print(f"| {k} | {m[k]:.1f} | {t[k]:.1f} | {m[k] / t[k]:.2f}× | {kk} |")


if __name__ == "__main__":
    main()
