"""Make MLX fast on Linux CPUs.

The Linux `mlx[cpu]` wheel links a reference BLAS (≈5 GFLOP/s for fp32 matmul here); loading an
optimised OpenBLAS with RTLD_GLOBAL *before* mlx is imported makes mlx resolve its cblas/lapack
symbols there (measured ≈170 GFLOP/s on 2 cores, identical results). Not needed on macOS, where
mlx uses Accelerate/Metal.

OpenBLAS picks its kernels from the CPU's identity, and an OpenBLAS older than the CPU falls back
to a generic SSE3 core ("Prescott"): Debian's 0.3.21 on a recent virtualised Xeon measured 20
GFLOP/s on one thread instead of 76. When OPENBLAS_CORETYPE is unset, it is set from the CPU's
feature flags (AVX-512 → SkylakeX, AVX2 + FMA → Haswell), the kernels the detection would pick on
a CPU it knows; a value the user set is kept.

OpenBLAS's idle worker threads spin for 2^28 cycles (~0.1 s) after each call before they sleep, and
MLX calls sgemm hundreds of times per training step with its own ops in between: the spinning
worker held a core the whole step (0 voluntary context switches, 0.6 s of sched_yield per 4 × 256
step) and slowed the stream thread and the CPU kernels' threads sharing it (a step 4.4 s instead of
3.4-3.7). OPENBLAS_THREAD_TIMEOUT (read when OpenBLAS loads) is set to 2^14 cycles (a few µs, enough
for back-to-back calls) unless the user set it.
"""
from __future__ import annotations

import ctypes
import os
import sys

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)
SPIN_CYCLES_LOG2 = "14"            # OpenBLAS's idle spin before sleeping: 2^14 cycles (its default 2^28)
_loaded: str | None = None


def preload_fast_blas() -> str | None:
    """Load OpenBLAS globally if available (TWINLORA_BLAS overrides, TWINLORA_BLAS=none disables)."""
    global _loaded
    if _loaded or not sys.platform.startswith("linux") or "mlx.core" in sys.modules:
        return _loaded
    choice = os.environ.get("TWINLORA_BLAS")
    if choice == "none":
        return None
    _kernel_from_cpu_flags()
    if not os.environ.get("OPENBLAS_THREAD_TIMEOUT"):
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = SPIN_CYCLES_LOG2
    for path in ([choice] if choice else CANDIDATES):
        if path and os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                _loaded = path
                return path
            except OSError:
                continue
    return None


def _kernel_from_cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """Set OPENBLAS_CORETYPE (read by OpenBLAS when it loads) from the x86 feature flags, unless set."""
    if os.environ.get("OPENBLAS_CORETYPE"):
        return os.environ["OPENBLAS_CORETYPE"]
    try:
        with open(cpuinfo) as fh:
            flags = next((set(line.split(":", 1)[1].split()) for line in fh if line.startswith("flags")), set())
    except OSError:
        return None
    kind = ("SkylakeX" if {"avx512f", "avx512bw", "avx512vl"} <= flags
            else "Haswell" if {"avx2", "fma"} <= flags else None)
    if kind:
        os.environ["OPENBLAS_CORETYPE"] = kind
    return kind
