"""MLX's answers to common/models/devices.py: which device runs, how much memory it has. The one place the
MLX backend asks; tests replace `device_kind` to run the GPU branch on a CPU."""
from __future__ import annotations

import mlx.core as mx

from common.models.devices import Choices, mlx_choices, sdpa_attention_bytes


def device_kind() -> str:
    """'cpu', or 'gpu' for Metal (Apple silicon) and CUDA (mlx[cuda])."""
    return "cpu" if mx.default_device() == mx.cpu else "gpu"


def memory_bytes() -> int | None:
    """The GPU's recommended working set (Metal), or its memory; None when MLX does not say."""
    for info in (getattr(mx, "device_info", None), getattr(getattr(mx, "metal", None), "device_info", None)):
        try:
            d = info() if info else None
        except Exception:                   # no GPU behind this MLX build
            d = None
        if d:
            return int(d.get("max_recommended_working_set_size") or d.get("memory_size") or 0) or None
    return None


def heads_of(model) -> int:
    args = getattr(model, "args", None)
    return int(getattr(args, "num_attention_heads", 0) or getattr(args, "n_heads", 0) or 1)


def choices(model, batch: int, seq_len: int) -> Choices:
    """This device's choices for a step of `batch` rows of `seq_len` tokens on `model`."""
    from backends.mlx import attention, cpu_kernels
    from common.training import longseq
    kind = device_kind()
    need = sdpa_attention_bytes(batch, heads_of(model), seq_len)
    return mlx_choices(kind, seq_len, chunk=longseq.ATTENTION_CHUNK, compiled_rows=attention.COMPILED_ROWS,
                       attention_bytes=need, memory_bytes=memory_bytes() if kind != "cpu" else None,
                       kernels_built=kind == "cpu" and cpu_kernels.available())
