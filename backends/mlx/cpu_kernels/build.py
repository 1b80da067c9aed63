"""Build the CPU kernels (kernels.cpp) into this folder: `python -m backends.mlx.cpu_kernels.build`.

scripts/setup.sh runs it on Linux (g++, cmake and `nanobind` installed; MLX's CPU backend is
where they help). The build happens in a scratch folder; the finished module is moved into place
in one rename, so an interrupted build leaves the previous module (or none), never half of one.
Exit 0 built, 2 with one line saying what is missing.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULE = "_cpu_kernels" + sysconfig.get_config_var("EXT_SUFFIX")


def missing() -> str | None:
    """What the build needs and this machine lacks, in words (None: nothing)."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            return f"no `{tool}` on PATH (Debian: apt-get install cmake g++)"
    try:
        import mlx.core  # noqa: F401
        import nanobind  # noqa: F401
    except ImportError as e:
        return f"the Python package {e.name!r} is not installed (pip install nanobind==3.1.0 'mlx[cpu]')"
    return None


def build() -> Path:
    """Configure and build in a scratch folder, then move the module next to this file."""
    with tempfile.TemporaryDirectory(prefix="twinlora-kernels-") as tmp:
        cmd = ["cmake", "-S", str(HERE), "-B", tmp, "-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={sys.executable}"]
        for step in (cmd, ["cmake", "--build", tmp, "-j2"]):
            run = subprocess.run(step, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if run.returncode:
                last = [ln for ln in run.stderr.splitlines() if ln.strip()][-3:]
                raise RuntimeError(f"{' '.join(step[:2])} failed: " + " | ".join(last))
        built = next(Path(tmp).glob("_cpu_kernels*.so"))
        staged = HERE / (MODULE + ".partial")
        shutil.copy2(built, staged)
        staged.replace(HERE / MODULE)
    return HERE / MODULE


def main() -> int:
    why = missing()
    if why:
        print(f"twinlora CPU kernels not built: {why}; MLX uses its own ops (slower on a CPU)")
        return 2
    try:
        path = build()
    except (RuntimeError, StopIteration) as e:
        print(f"twinlora CPU kernels not built: {e or 'no module came out of the build'}; MLX uses its own ops")
        return 2
    from backends.mlx import cpu_kernels
    cpu_kernels.forget()
    if not cpu_kernels.available():
        print(f"twinlora CPU kernels built at {path} but not usable: {cpu_kernels.why_not()}")
        return 2
    print(f"twinlora CPU kernels built: {path.name} (MLX {cpu_kernels.load().BUILT_FOR_MLX})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
