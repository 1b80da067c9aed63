"""Backends behind one small interface, imported lazily so `cli.py --help` and the shared layer
need neither framework, and a machine with one backend installed still runs the other."""
from __future__ import annotations

import importlib

from common.errors import BackendError

ALIASES = {"mlx": "mlx", "cuda": "torch", "torch": "torch"}
NAMES = tuple(ALIASES)  # what --backend accepts
_REQUIRES = {
    "mlx": ("mlx.core", 'pip install "mlx[cpu]" mlx-lm (Linux) or pip install mlx mlx-lm (Apple Silicon)'),
    "torch": ("torch", "pip install torch==2.13.0 && pip install transformers peft"),
}


def canonical(name: str) -> str:
    if name not in ALIASES:
        raise BackendError(f"unknown backend {name!r}", where="--backend", fix=f"use one of {', '.join(NAMES)}")
    return ALIASES[name]


def get_backend(name: str):
    """The Backend class for a name; a clear one-line error when its library is missing."""
    key = canonical(name)
    module, install = _REQUIRES[key]
    if key == "mlx":
        from backends.mlx.blas import preload_fast_blas
        preload_fast_blas()
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise BackendError(f"the {name} backend needs {module.split('.')[0]}, which is not installed "
                           f"on this machine ({exc.msg})", where="--backend", fix=install) from exc
    mod = importlib.import_module(f"backends.{key}.backend")
    return mod.Backend


def process_group(name: str):
    """The ProcessGroup (backends/base.py) of a backend: its `distributed` module, which imports
    the framework only when a process joins a group."""
    return importlib.import_module(f"backends.{canonical(name)}.distributed")
