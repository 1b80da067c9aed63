"""`convert`: common (PEFT) format ↔ mlx-lm's native format, exactly (see common.adapters.format).

An adapter written by plain `mlx_lm lora` (not by twinlora) records neither PEFT's target modules
nor which blocks it covers when `lora_parameters.keys` is unset (mlx-lm then adapts every linear
layer of the last `num_layers` blocks), and names its base only in its `model` field. Those are
read from the weights themselves and from the base model's config and safetensors header, so the
PEFT config written names the right modules, blocks, alpha (= scale × r) and base.
"""
from __future__ import annotations

import json
from pathlib import Path

from common.adapters.format import (CONFIG, AdapterSpec, _LAYER, base_sha256, block_relative, detect_format, load_adapter,
                            module_paths_of, modules_for_adapter, peft_to_mlx, save_common, save_mlx_native)
from common.errors import AdapterError
from common.runs.io import atomic_dir


def convert_adapter(src: Path, dst: Path, fmt: str, model: str | None = None) -> Path:
    from common.runs.ownership import check_output_dir
    check_output_dir(dst, "adapter", "DST", inputs=[src])  # convert A A would drop A's other files
    spec, weights, meta = load_adapter(src)
    plain_mlx = fmt == "common" and _is_plain_mlx(Path(src))
    if plain_mlx:
        model = model or _recorded_base(Path(src))
    model_dir = None
    if model:
        from common.models.resolve import read_model_config, resolve_model
        model_dir = resolve_model(model)
        if spec.num_hidden_layers is None:
            spec.num_hidden_layers = int(read_model_config(model_dir)["num_hidden_layers"])
    keys = sorted({block_relative(p) for p in module_paths_of(weights)})
    if fmt == "common":
        meta = {k: v for k, v in meta.items() if k not in ("files", "adapter", "format_version")}
        meta.setdefault("converted_from", str(src))
        if meta.get("template_file") and (Path(src) / meta["template_file"]).is_file():
            meta["template"] = str(Path(src) / meta["template_file"])  # save_common copies it along
        if plain_mlx:
            meta.update(_complete_plain_mlx(spec, weights, model, model_dir, str(src)))
        elif "base_model" not in meta:
            meta.update(_recorded_base_meta(Path(src)))
        return save_common(dst, spec, weights, meta)
    if spec.num_hidden_layers is None and spec.layers is not None:
        raise AdapterError("the adapter covers only some blocks and its model's block count is unknown",
                           where=str(src), fix="pass --model (the base model) so the block count can be read")
    with atomic_dir(dst) as tmp:
        save_mlx_native(tmp, spec, peft_to_mlx(weights), keys, base_sha256(meta))
    return dst


def _is_plain_mlx(src: Path) -> bool:
    """An mlx-lm adapter without twinlora's extra block (so written by `mlx_lm lora` itself)."""
    if detect_format(src) != "mlx":
        return False
    try:
        return "twinlora" not in json.loads((src / CONFIG).read_text())
    except (OSError, ValueError):
        return False


def _recorded_base_meta(src: Path) -> dict:
    """twinlora.json's base_model for a converted adapter whose own files record its base (a run's
    mlx/ folder): the base check then still applies to the converted copy."""
    from common.adapters.base import recorded
    rec = recorded(src)
    if not rec["names"] and not rec["sha256"]:
        return {}
    return {"base_model": {"name": rec["names"][0] if rec["names"] else "?", "sha256": rec["sha256"]}}


def _recorded_base(src: Path) -> str:
    """The base `mlx_lm lora --model` recorded (a hub id, or a path relative to where it ran)."""
    recorded = json.loads((src / CONFIG).read_text()).get("model")
    if isinstance(recorded, str) and recorded:
        from common.models.resolve import is_hub_id
        if is_hub_id(recorded) or Path(recorded).expanduser().is_dir():
            return recorded
        raise AdapterError(f"this mlx-lm adapter was trained on base {recorded!r}, which is not a directory here",
                           where=str(src / CONFIG), fix="pass --base with the base model's directory or hub id")
    raise AdapterError("this mlx-lm adapter does not name its base model (no \"model\" in adapter_config.json)",
                       where=str(src / CONFIG), fix="pass --base with the base model's directory or hub id")


def _base_linears(model_dir: Path) -> dict[str, tuple[int, int]]:
    """2-D `<path>.weight` shapes of the base, read from the safetensors headers (no weights loaded)."""
    from safetensors import safe_open
    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "np") as fh:
            for k in fh.keys():
                shape = fh.get_slice(k).get_shape()
                if k.endswith(".weight") and len(shape) == 2:
                    out[k[: -len(".weight")]] = (int(shape[0]), int(shape[1]))
    return out


def _complete_plain_mlx(spec: AdapterSpec, weights: dict, model: str, model_dir: Path, where: str) -> dict:
    """Fill the spec from the weights (target modules, blocks) and the base; return metadata."""
    from common.models.resolve import peft_base_name, weights_hash
    modules_for_adapter(spec, weights, _base_linears(model_dir), where)  # every tensor fits the base
    paths = module_paths_of(weights)
    spec.target_modules = sorted({p.rsplit(".", 1)[-1] for p in paths})
    blocks = sorted({int(m.group(1)) for m in map(_LAYER.search, paths) if m})
    n = spec.num_hidden_layers
    spec.layers = None if n is not None and blocks == list(range(n)) else blocks
    spec.base_model = peft_base_name(model, model_dir)
    return {"base_model": {"name": model, "path": str(model_dir), "sha256": weights_hash(model_dir)},
            "trained_by": "mlx_lm lora"}
