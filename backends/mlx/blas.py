"""Make MLX fast on Linux CPUs.

The Linux `mlx[cpu]` wheel links a reference BLAS (≈5 GFLOP/s for fp32 matmul here); loading an
optimised OpenBLAS with RTLD_GLOBAL *before* mlx is imported makes mlx resolve its cblas/lapack
symbols there (measured ≈170 GFLOP/s on 2 cores, identical results). Not needed on macOS, where
mlx uses Accelerate/Metal.
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
    for path in ([choice] if choice else CANDIDATES):
        if path and os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                _loaded = path
                return path
            except OSError:
                continue
    return None
