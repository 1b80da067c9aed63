"""The OpenBLAS kernel choice (backends/mlx/blas.py): an OpenBLAS that does not know the CPU falls
back to a generic SSE3 core, 4x slower here; the feature flags pick the kernels instead."""
from __future__ import annotations

import os

import pytest

from backends.mlx.blas import CANDIDATES, _kernel_from_cpu_flags


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
    assert os.environ.get("OPENBLAS_CORETYPE") == want


def test_kernel_set_by_the_user_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Zen")
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: avx2 fma avx512f avx512bw avx512vl\n")
    assert _kernel_from_cpu_flags(str(info)) == "Zen"


def test_no_cpuinfo_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    assert _kernel_from_cpu_flags(str(tmp_path / "missing")) is None
    assert "OPENBLAS_CORETYPE" not in os.environ


_IDLE_THREADS = """
import os, sys, threading, time
sys.path.insert(0, {root!r})
from backends.mlx.blas import preload_fast_blas
assert preload_fast_blas(), "no OpenBLAS"
import mlx.core as mx
a = mx.random.normal((512, 512))
mx.eval(a @ a)                                   # OpenBLAS's worker threads now exist and went idle
t0 = time.monotonic()
time.sleep(0.025)                                # past any scheduling delay of a worker going to sleep
me, runnable = str(threading.get_native_id()), set()
while time.monotonic() - t0 < 0.055:             # within the default spin (2^28 cycles: 67 ms at 4 GHz)
    for t in os.listdir("/proc/self/task"):
        if t != me and open(f"/proc/self/task/{{t}}/stat").read().rsplit(")", 1)[1].split()[0] == "R":
            runnable.add(t)
    time.sleep(0.002)
print(os.environ["OPENBLAS_THREAD_TIMEOUT"], len(runnable))
"""


@pytest.mark.skipif(not any(os.path.exists(p) for p in CANDIDATES), reason="no system OpenBLAS")
@pytest.mark.parametrize("user_value", [None, "28"])
def test_idle_openblas_threads_sleep_instead_of_spinning(user_value):
    """After a matmul, OpenBLAS's idle worker spins 2^28 cycles by default (runnable for ~0.1 s after
    every call, a core's worth of CPU through an MLX step): with the preload's setting it sleeps at
    once; a value the user set is kept. Thread states, not CPU time: a spinning thread yields to
    other processes on a loaded machine, but stays runnable."""
    import subprocess
    import sys
    from pathlib import Path
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    env.update({"OPENBLAS_NUM_THREADS": "2"}, **({"OPENBLAS_THREAD_TIMEOUT": user_value} if user_value else {}))
    out = subprocess.run([sys.executable, "-c", _IDLE_THREADS.format(root=str(Path(__file__).resolve().parents[1]))],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    value, spinning = out[0], int(out[1])
    if user_value is None:
        assert (value, spinning) == ("14", 0)
    else:
        assert (value, spinning) == ("28", 1)          # the spin this setting avoids, observed
