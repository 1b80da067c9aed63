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
