"""`convert`: common (PEFT) format ↔ mlx-lm's native format, exactly (see common.adapter)."""
from __future__ import annotations

from pathlib import Path

from common.adapter import (block_relative, load_adapter, module_paths_of, peft_to_mlx, save_common,
                            save_mlx_native)
from common.errors import AdapterError
from common.io import atomic_dir


def convert_adapter(src: Path, dst: Path, fmt: str, model: str | None = None) -> Path:
    from common.ownership import check_output_dir
    check_output_dir(dst, "adapter", "DST", inputs=[src])  # convert A A would drop A's other files
    spec, weights, meta = load_adapter(src)
    if spec.num_hidden_layers is None and model:
        from common.models import read_model_config, resolve_model
        spec.num_hidden_layers = int(read_model_config(resolve_model(model))["num_hidden_layers"])
    keys = sorted({block_relative(p) for p in module_paths_of(weights)})
    if fmt == "common":
        meta = {k: v for k, v in meta.items() if k not in ("files", "adapter", "format_version")}
        meta.setdefault("converted_from", str(src))
        return save_common(dst, spec, weights, meta)
    if spec.num_hidden_layers is None and spec.layers is not None:
        raise AdapterError("the adapter covers only some blocks and its model's block count is unknown",
                           where=str(src), fix="pass --model (the base model) so the block count can be read")
    with atomic_dir(dst) as tmp:
        save_mlx_native(tmp, spec, peft_to_mlx(weights), keys)
    return dst
