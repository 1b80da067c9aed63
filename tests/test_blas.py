"""The OpenBLAS kernel choice (backends/mlx/blas.py): an OpenBLAS that does not know the CPU falls
back to a generic SSE3 core, 4x slower here; the feature flags pick the kernels instead."""
from __future__ import annotations

import pytest

from backends.mlx.blas import _kernel_from_cpu_flags


@pytest.mark.parametrize("flags, want", [
    ("fpu sse2 avx avx2 fma avx512f avx512bw avx512vl", "SkylakeX"),
    ("fpu sse2 avx avx2 fma avx512f", "Haswell"),          # AVX-512 without BW/VL: not SkylakeX kernels
    ("fpu sse2 avx avx2 fma", "Haswell"),
    ("fpu sse2 avx", None),                                   # left to OpenBLAS's own detection
])
def test_kernel_from_flags(tmp_path, monkeypatch, flags, want):
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert _kernel_from_cpu_flags(str(info)) == want
    import os
    assert os.environ.get("OPENBLAS_CORETYPE") == want


def test_kernel_set_by_the_user_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Zen")
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: avx2 fma avx512f avx512bw avx512vl\n")
    assert _kernel_from_cpu_flags(str(info)) == "Zen"


def test_no_cpuinfo_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    assert _kernel_from_cpu_flags(str(tmp_path / "missing")) is None
    import os
    assert "OPENBLAS_CORETYPE" not in os.environ
