"""The common adapter format and exact conversion to and from mlx-lm's native format.

Common format (a directory):
- `adapter_model.safetensors`: PEFT key names and shapes
  (`base_model.model.<path>.lora_A.weight` (r, in), `...lora_B.weight` (out, r),
  `...lora_magnitude_vector` (out,) for DoRA), float32;
- `adapter_config.json`: a PEFT LoraConfig dict (so `PeftModel.from_pretrained`, vLLM and
  llama.cpp's convert_lora_to_gguf.py read it);
- `twinlora.json`: metadata (base model and its weight hash, data hash, template, full config,
  backend, library versions, metrics, and the sha256 of the weights file, checked on load).

mlx-lm native format: `adapters.safetensors` (`<path>.lora_a` (in, r), `<path>.lora_b` (r, out),
`<path>.m` (out,)) + `adapter_config.json` with `lora_parameters.scale`.
The scale maps exactly: mlx `scale` = alpha / r (or alpha / sqrt(r) with rsLoRA); converting back
recovers alpha from the recorded rank and rsLoRA flag. Only transposes happen to the weights, so a
round trip is bit-exact.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from common.errors import AdapterError
from common.runs.io import atomic_dir, sha256_file, write_json

PEFT_PREFIX = "base_model.model."
COMMON_WEIGHTS = "adapter_model.safetensors"
MLX_WEIGHTS = "adapters.safetensors"
CONFIG = "adapter_config.json"
META = "twinlora.json"
CARD = "README.md"
TEMPLATE_FILE = "twinlora_template.jinja"  # a Jinja template file the adapter was trained with, copied
FORMAT_VERSION = 1

_PEFT_KEY = re.compile(r"^base_model\.model\.(.+)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector)$")
_MLX_KEY = re.compile(r"^(.+)\.(lora_a|lora_b|m)$")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")


@dataclass
class AdapterSpec:
    """What both libraries need to rebuild the LoRA layers; written into both config formats."""

    rank: int
    alpha: float
    dropout: float = 0.0
    target_modules: list = field(default_factory=lambda: ["q_proj", "v_proj"])
    layers: list | None = None           # indices of adapted blocks (None = all)
    num_hidden_layers: int | None = None
    use_rslora: bool = False
    use_dora: bool = False
    base_model: str = ""

    @property
    def scale(self) -> float:
        return scale_of(self.rank, self.alpha, self.use_rslora)


def scale_of(rank: int, alpha: float, use_rslora: bool) -> float:
    """PEFT's scaling: alpha/r, or alpha/sqrt(r) with rsLoRA. mlx-lm's `scale` is this number."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def alpha_of(rank: int, scale: float, use_rslora: bool) -> float:
    return scale * math.sqrt(rank) if use_rslora else scale * rank


# ---------------------------------------------------------------- configs

def peft_config_dict(spec: AdapterSpec) -> dict:
    """An adapter_config.json that PEFT's LoraConfig accepts as is."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": spec.base_model,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": sorted(spec.target_modules),
        "layers_to_transform": spec.layers,
        "use_rslora": spec.use_rslora,
        "use_dora": spec.use_dora,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def spec_from_peft_config(cfg: dict, where: str) -> AdapterSpec:
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"peft_type {cfg.get('peft_type')!r} is not LoRA", where=where,
                           fix="twinlora reads LoRA/rsLoRA/DoRA adapters only")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise AdapterError("per-module rank_pattern/alpha_pattern is not supported", where=where,
                           fix="use one rank and alpha for every module")
    tm = cfg.get("target_modules")
    if isinstance(tm, str):
        raise AdapterError(f"target_modules is a pattern ({tm!r}), not a list of names", where=where,
                           fix="re-save the adapter with an explicit list of module names")
    layers = cfg.get("layers_to_transform")
    if isinstance(layers, int):
        layers = [layers]
    return AdapterSpec(rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]),
                       dropout=float(cfg.get("lora_dropout", 0.0)), target_modules=list(tm or []),
                       layers=layers, use_rslora=bool(cfg.get("use_rslora", False)),
                       use_dora=bool(cfg.get("use_dora", False)),
                       base_model=cfg.get("base_model_name_or_path") or "")


def mlx_keys(spec: AdapterSpec, module_paths: list[str]) -> list[str]:
    """mlx-lm `keys`: block-relative paths (e.g. self_attn.q_proj) of the adapted modules."""
    return sorted({p for p in module_paths if p.rsplit(".", 1)[-1] in spec.target_modules})


def mlx_config_dict(spec: AdapterSpec, keys: list[str], base_sha256: str | None = None) -> dict:
    """mlx-lm's adapter_config.json: it adapts the last `num_layers` blocks. Our block records the
    base and its weight hash, so this folder alone is still checked against the base it meets."""
    n = spec.num_hidden_layers
    if spec.layers is not None:
        if n is None or sorted(spec.layers) != list(range(n - len(spec.layers), n)):
            raise AdapterError("mlx-lm can only adapt the last N blocks; this adapter covers "
                               f"blocks {spec.layers}", fix="train with lora.layers: N (the last N blocks)")
        num_layers = len(spec.layers)
    else:
        num_layers = n if n is not None else -1
    return {
        "fine_tune_type": "dora" if spec.use_dora else "lora",
        "num_layers": num_layers,
        "lora_parameters": {"rank": spec.rank, "scale": spec.scale, "dropout": spec.dropout, "keys": keys},
        # Not read by mlx-lm; kept so the exact alpha/rsLoRA and the base survive a round trip.
        "twinlora": {"alpha": spec.alpha, "use_rslora": spec.use_rslora,
                     "num_hidden_layers": spec.num_hidden_layers, "base_model": spec.base_model,
                     "base_sha256": base_sha256},
    }


def spec_from_mlx_config(cfg: dict, where: str, num_hidden_layers: int | None = None) -> AdapterSpec:
    lp = cfg.get("lora_parameters")
    if not isinstance(lp, dict) or "rank" not in lp or "scale" not in lp:
        raise AdapterError("not an mlx-lm LoRA adapter config (lora_parameters.rank/scale missing)",
                           where=where, fix="point at a directory written by mlx_lm lora or twinlora")
    if cfg.get("fine_tune_type", "lora") not in ("lora", "dora"):
        raise AdapterError(f"fine_tune_type {cfg.get('fine_tune_type')!r} is not an adapter", where=where)
    extra = cfg.get("twinlora", {})
    rslora = bool(extra.get("use_rslora", False))
    rank = int(lp["rank"])
    alpha = extra.get("alpha", alpha_of(rank, float(lp["scale"]), rslora))
    n = extra.get("num_hidden_layers", num_hidden_layers)
    num_layers = int(cfg.get("num_layers", -1))
    layers = None
    if n is not None and 0 < num_layers < n:
        layers = list(range(n - num_layers, n))
    keys = lp.get("keys") or []
    return AdapterSpec(rank=rank, alpha=float(alpha), dropout=float(lp.get("dropout", 0.0)),
                       target_modules=sorted({k.rsplit(".", 1)[-1] for k in keys}), layers=layers,
                       num_hidden_layers=n, use_rslora=rslora,
                       use_dora=cfg.get("fine_tune_type") == "dora", base_model=extra.get("base_model", ""))


# ---------------------------------------------------------------- weights

# mlx-lm leaf → (PEFT leaf, transposed?): the one table both converters read.
LEAVES = {"lora_a": ("lora_A.weight", True), "lora_b": ("lora_B.weight", True), "m": ("lora_magnitude_vector", False)}
_PEFT_LEAVES = {peft: (mlx, tr) for mlx, (peft, tr) in LEAVES.items()}


def mlx_key_to_peft(key: str) -> tuple[str, bool]:
    """`<path>.lora_a` → (`base_model.model.<path>.lora_A.weight`, transposed)."""
    m = _MLX_KEY.match(key)
    if not m:
        raise AdapterError(f"unexpected tensor {key!r} in an mlx-lm adapter",
                           fix="only lora_a, lora_b and m (DoRA) tensors are expected")
    path, leaf = m.groups()
    peft_leaf, transposed = LEAVES[leaf]
    return f"{PEFT_PREFIX}{path}.{peft_leaf}", transposed


def peft_key_to_mlx(key: str) -> tuple[str, bool]:
    m = _PEFT_KEY.match(key)
    if not m:
        raise AdapterError(f"unexpected tensor {key!r} in a PEFT adapter",
                           fix="only lora_A/lora_B weights and DoRA magnitude vectors are supported")
    path, leaf = m.groups()
    mlx_leaf, transposed = _PEFT_LEAVES[leaf]
    return f"{path}.{mlx_leaf}", transposed


def _convert(weights: dict[str, np.ndarray], rename) -> dict[str, np.ndarray]:
    out = {}
    for k, w in weights.items():
        name, transposed = rename(k)
        out[name] = np.ascontiguousarray(w.T if transposed else w)
    return out


def mlx_to_peft(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """mlx-lm names/shapes → PEFT names/shapes (transposes only, so exact)."""
    return _convert(weights, mlx_key_to_peft)


def peft_to_mlx(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PEFT names/shapes → mlx-lm names/shapes (transposes only, so exact)."""
    return _convert(weights, peft_key_to_mlx)


def module_paths_of(weights: dict[str, np.ndarray]) -> list[str]:
    """Full module paths (HF naming, e.g. model.layers.0.self_attn.q_proj) in a PEFT state dict."""
    return sorted({_PEFT_KEY.match(k).group(1) for k in weights if _PEFT_KEY.match(k)})


def block_relative(path: str) -> str | None:
    m = _LAYER.search(path)
    return m.group(2) if m else None


def init_lora_weights(spec: AdapterSpec, shapes: dict[str, tuple[int, int]], seed: int) -> dict[str, np.ndarray]:
    """Initial LoRA weights for modules {path: (out, in)}: A ~ U(±1/sqrt(in)) (PEFT's
    kaiming_uniform(a=√5) and mlx-lm's init share this bound), B = 0.

    Drawn here, once, so both backends start from the very same numbers.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for path in sorted(shapes):
        o, i = shapes[path]
        bound = 1.0 / math.sqrt(i)
        out[f"{PEFT_PREFIX}{path}.lora_A.weight"] = rng.uniform(-bound, bound, (spec.rank, i)).astype(np.float32)
        out[f"{PEFT_PREFIX}{path}.lora_B.weight"] = np.zeros((o, spec.rank), np.float32)
    return out


# ---------------------------------------------------------------- files

def _save_safetensors(path: Path, weights: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(path),
              metadata={"format": "pt", **(metadata or {})})


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    try:
        return load_file(str(path))
    except Exception as exc:
        raise AdapterError(f"cannot read the adapter weights ({exc})", where=str(path),
                           fix="the file is damaged or not safetensors; re-export the adapter") from exc


def save_common(out_dir: Path, spec: AdapterSpec, weights: dict[str, np.ndarray], meta: dict,
                mlx_keys_list: list[str] | None = None) -> Path:
    """Write the common format atomically (and mlx-lm's native files when keys are given)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        _save_safetensors(tmp / COMMON_WEIGHTS, weights)
        write_json(tmp / CONFIG, peft_config_dict(spec))
        meta = dict(meta)
        meta.update(format_version=FORMAT_VERSION, adapter=asdict(spec),
                    files={COMMON_WEIGHTS: sha256_file(tmp / COMMON_WEIGHTS)})
        template = meta.get("template")
        if template not in (None, "chat", "raw") and Path(template).is_file():
            # eval/generate use the recorded template by default: keep it with the adapter
            (tmp / TEMPLATE_FILE).write_bytes(Path(template).read_bytes())
            meta["template_file"] = TEMPLATE_FILE
        if mlx_keys_list is not None:
            native = tmp / "mlx"
            native.mkdir()
            save_mlx_native(native, spec, peft_to_mlx(weights), mlx_keys_list, base_sha256(meta))
            meta["files"]["mlx/" + MLX_WEIGHTS] = sha256_file(native / MLX_WEIGHTS)
        write_json(tmp / META, meta)
        from common.adapters.model_card import render_card
        (tmp / CARD).write_text(render_card(spec, meta), encoding="utf-8")
    return out_dir


def save_mlx_native(out_dir: Path, spec: AdapterSpec, weights_mlx: dict[str, np.ndarray], keys: list[str],
                    base_sha256: str | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_safetensors(out_dir / MLX_WEIGHTS, weights_mlx)
    write_json(out_dir / CONFIG, mlx_config_dict(spec, keys, base_sha256))


def base_sha256(meta: dict) -> str | None:
    """The base weights' hash twinlora.json records (None for an adapter that records none)."""
    base = meta.get("base_model") if isinstance(meta, dict) else None
    return base.get("sha256") if isinstance(base, dict) else None


def detect_format(path: Path) -> str:
    path = Path(path)
    if (path / COMMON_WEIGHTS).is_file():
        return "common"
    if (path / MLX_WEIGHTS).is_file():
        return "mlx"
    if (path / "adapter_model.bin").is_file():
        raise AdapterError("adapter weights are a pickle (adapter_model.bin); twinlora loads safetensors only",
                           where=str(path), fix="re-save with PEFT's save_pretrained(safe_serialization=True)")
    raise AdapterError("no adapter here (expected adapter_model.safetensors or adapters.safetensors)",
                       where=str(path), fix="point at an adapter directory (a run's adapter/ folder)")


def load_adapter(path: Path) -> tuple[AdapterSpec, dict[str, np.ndarray], dict]:
    """Load a common-format or mlx-lm adapter; return (spec, PEFT-named weights, metadata)."""
    path = Path(path)
    fmt = detect_format(path)
    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        raise AdapterError("adapter_config.json is missing", where=str(path), fix="copy it beside the weights")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise AdapterError(f"adapter_config.json is not valid JSON ({getattr(exc, 'msg', exc)})", where=str(cfg_path)) from exc
    meta: dict = {}
    if not isinstance(cfg, dict):
        raise AdapterError(f"adapter_config.json holds a {type(cfg).__name__}, not an object", where=str(cfg_path),
                           fix="re-export the adapter (its config is a JSON object with r, lora_alpha, ...)")
    if fmt == "common":
        try:
            spec = spec_from_peft_config(cfg, str(cfg_path))
        except (KeyError, TypeError, ValueError) as exc:
            raise AdapterError(f"adapter_config.json has a missing or invalid field ({type(exc).__name__}: {exc})",
                               where=str(cfg_path), fix="re-export the adapter (r and lora_alpha must be numbers)") from exc
        wfile = path / COMMON_WEIGHTS
        if (path / META).is_file():
            try:
                meta = json.loads((path / META).read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise AdapterError(f"twinlora.json is not valid JSON ({exc})", where=str(path / META),
                                   fix="re-export the adapter, or delete twinlora.json to load it as a plain PEFT adapter") from exc
            if not isinstance(meta, dict) or not isinstance(meta.get("files", {}), dict):
                raise AdapterError("twinlora.json is not a twinlora metadata object", where=str(path / META),
                                   fix="re-export the adapter, or delete twinlora.json to load it as a plain PEFT adapter")
            expected = meta.get("files", {}).get(COMMON_WEIGHTS)
            if expected and expected != sha256_file(wfile):
                raise AdapterError("adapter weights do not match the checksum in twinlora.json (damaged or edited)",
                                   where=str(wfile), fix="re-export the adapter, or copy it again")
            spec.num_hidden_layers = meta.get("adapter", {}).get("num_hidden_layers")
        weights = _load_safetensors(wfile)
        for k in weights:
            if not _PEFT_KEY.match(k):
                raise AdapterError(f"unexpected tensor {k!r}", where=str(wfile),
                                   fix="only lora_A/lora_B weights and DoRA magnitude vectors are supported")
    else:
        try:
            spec = spec_from_mlx_config(cfg, str(cfg_path))
        except (KeyError, TypeError, ValueError) as exc:
            raise AdapterError(f"adapter_config.json has a missing or invalid field ({type(exc).__name__}: {exc})",
                               where=str(cfg_path), fix="re-export the adapter") from exc
        weights = mlx_to_peft(_load_safetensors(path / MLX_WEIGHTS))
    if not weights:
        raise AdapterError("the adapter holds no tensors", where=str(path), fix="re-export it")
    bad = non_finite(weights)
    if bad:
        raise AdapterError(f"tensor {bad} holds NaN or inf values; the adapter would poison every output",
                           where=str(path), fix="use an earlier checkpoint or retrain with a lower training.lr")
    _check_consistent(spec, weights, str(path))
    return spec, weights, meta


def non_finite(weights: dict) -> str | None:
    """The first tensor (by name) holding NaN or inf, or None. Checked before a checkpoint or an
    adapter is written and when one is loaded (PEFT's safe_merge refuses them too)."""
    for k in sorted(weights):
        w = np.asarray(weights[k])
        if w.dtype.kind == "f" and not np.isfinite(w).all():
            return k
    return None


def _check_consistent(spec: AdapterSpec, weights: dict[str, np.ndarray], where: str) -> None:
    bad = []
    for k, w in weights.items():
        if k.endswith("lora_A.weight") and w.shape[0] != spec.rank:
            bad.append(f"{k} has rank {w.shape[0]}")
        if k.endswith("lora_B.weight") and w.shape[1] != spec.rank:
            bad.append(f"{k} has rank {w.shape[1]}")
    if bad:
        raise AdapterError(f"tensor shapes disagree with r={spec.rank} in adapter_config.json: "
                           + "; ".join(bad[:3]), where=where, fix="re-export the adapter")


def check_shapes(weights: dict[str, np.ndarray], expected: dict[str, tuple], where: str) -> None:
    """Every adapter tensor must exist in the model with the same shape; report all at once."""
    problems = []
    for k, w in weights.items():
        if k not in expected:
            problems.append(f"{k}: no such module in the base model")
        elif tuple(w.shape) != tuple(expected[k]):
            problems.append(f"{k}: shape {tuple(w.shape)} != model's {tuple(expected[k])}")
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise AdapterError("adapter does not fit this base model: " + "; ".join(problems[:3]) + more,
                           where=where, fix="use the base model the adapter was trained on")


# ---------------------------------------------------------------- from the user's config

def spec_from_config(lora, linears: dict[str, tuple[int, int]], num_hidden_layers: int,
                     base_model: str) -> tuple[AdapterSpec, dict[str, tuple[int, int]]]:
    """Resolve `lora` settings against a model's linear layers {path: (out, in)}.

    Returns the spec (with "all-linear" expanded to explicit names, the same on both backends) and
    the selected modules. Unknown module names and ranks above a layer's size are errors.
    """
    in_blocks = {p: s for p, s in linears.items() if block_relative(p) is not None}
    names_in_model = sorted({p.rsplit(".", 1)[-1] for p in in_blocks})
    if lora.target_modules == "all-linear":
        targets = names_in_model
    else:
        targets = list(lora.target_modules)
        unknown = [t for t in targets if t not in names_in_model]
        if unknown:
            raise AdapterError(f"lora.target_modules {unknown} match no linear layer in this model",
                               where="lora.target_modules", fix=f"choose from {names_in_model} or \"all-linear\"")
    layers = None
    if lora.layers is not None:
        if lora.layers > num_hidden_layers:
            raise AdapterError(f"lora.layers={lora.layers} but the model has {num_hidden_layers} blocks",
                               where="lora.layers", fix=f"use at most {num_hidden_layers} or null")
        if lora.layers < num_hidden_layers:
            layers = list(range(num_hidden_layers - lora.layers, num_hidden_layers))
    chosen = {}
    for p, shape in in_blocks.items():
        idx = int(_LAYER.search(p).group(1))
        if p.rsplit(".", 1)[-1] in targets and (layers is None or idx in layers):
            chosen[p] = shape
    too_small = sorted((min(o, i), p) for p, (o, i) in chosen.items() if lora.rank > min(o, i))
    if too_small:
        limit, path = too_small[0]  # the smallest layer: the rank the fix suggests fits every layer
        o, i = chosen[path]
        raise AdapterError(f"lora.rank={lora.rank} is larger than layer {path} ({o}×{i})",
                           where="lora.rank", fix=f"use a rank <= {limit}")
    spec = AdapterSpec(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, target_modules=sorted(targets),
                       layers=layers, num_hidden_layers=num_hidden_layers, use_rslora=lora.use_rslora,
                       use_dora=lora.use_dora, base_model=base_model)
    return spec, chosen


def expected_shapes(spec: AdapterSpec, modules: dict[str, tuple[int, int]]) -> dict[str, tuple]:
    """PEFT key → shape for the given modules."""
    out = {}
    for p, (o, i) in modules.items():
        out[f"{PEFT_PREFIX}{p}.lora_A.weight"] = (spec.rank, i)
        out[f"{PEFT_PREFIX}{p}.lora_B.weight"] = (o, spec.rank)
        if spec.use_dora:
            out[f"{PEFT_PREFIX}{p}.lora_magnitude_vector"] = (o,)
    return out


def modules_for_adapter(spec: AdapterSpec, weights: dict[str, np.ndarray],
                        linears: dict[str, tuple[int, int]], where: str) -> dict[str, tuple[int, int]]:
    """The model modules an adapter's weights refer to; unknown modules or shapes are errors."""
    paths = module_paths_of(weights)
    missing = [p for p in paths if p not in linears]
    if missing:
        raise AdapterError(f"adapter targets module {missing[0]} which this base model does not have"
                           + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""),
                           where=where, fix="use the base model the adapter was trained on")
    modules = {p: linears[p] for p in paths}
    check_shapes(weights, expected_shapes(spec, modules), where)
    return modules


def recorded_prompting(adapter_dir: str | Path | None, meta: dict | None) -> tuple[str | None, str | None]:
    """(template, system prompt) the adapter was trained with, from its twinlora.json; (None, None)
    when nothing is recorded (a plain PEFT or mlx-lm adapter). A Jinja template file is read from
    the copy kept in the adapter directory, so a moved adapter still finds it."""
    if not meta or adapter_dir is None:
        return None, None
    template = meta.get("template")
    if meta.get("template_file") and (Path(adapter_dir) / meta["template_file"]).is_file():
        template = str(Path(adapter_dir) / meta["template_file"])
    return template, meta.get("system_prompt")
