"""The adapter's model card (`adapter/README.md`), shaped like the ones PEFT's `save_pretrained`
and TRL write: YAML front matter the Hugging Face hub reads (`base_model`, `library_name: peft`,
tags), then what was trained, on what, with which result, and how to load it in each tool."""
from __future__ import annotations

import json

from common.models.resolve import EMBEDDED_NAME

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _hub_base(meta: dict, base_path: str) -> str:
    """The front matter's `base_model`: a hub id when there is one (the hub validates it)."""
    name = (meta.get("base_model") or {}).get("name") or base_path
    if name in ("embedded", EMBEDDED_NAME):
        return EMBEDDED_HUB_ID
    return name


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def render_card(spec, meta: dict) -> str:
    """Markdown for `adapter/README.md` from the AdapterSpec and twinlora.json's metadata."""
    base_path = spec.base_model
    hub = _hub_base(meta, base_path)
    backend = meta.get("backend")
    cfg = meta.get("config") or {}
    tags = ["lora", "peft", "twinlora", *([backend] if backend else []), f"base_model:adapter:{hub}"]
    front = ["---", f"base_model: {hub}", "library_name: peft", "pipeline_tag: text-generation", "tags:",
             *[f"- {t}" for t in tags], "---", ""]
    title = cfg.get("name") or "LoRA adapter"
    lines = [f"# {title}", "",
             f"A {'DoRA' if spec.use_dora else 'LoRA'} adapter trained with twinlora"
             + (f" on the {backend} backend" if backend else "") + ".", ""]
    base = meta.get("base_model") or {}
    if base.get("name") in ("embedded", EMBEDDED_NAME):
        lines += [f"Base model: `{EMBEDDED_NAME}` as embedded in twinlora (the Q4_1 GGUF of `{EMBEDDED_HUB_ID}`, "
                  "de-quantized to float32): *not* the same weights as the hub's checkpoint. "
                  f"Local directory: `{base_path}`.", ""]
    else:
        lines += [f"Base model: `{base.get('name') or base_path}` (`base_model_name_or_path`: `{base_path}`).", ""]
    if base.get("sha256"):
        lines += [f"Base weights sha256: `{base['sha256']}` (twinlora refuses other weights).", ""]
    rows = _setting_rows(spec, meta, cfg)
    lines += ["## Training", "", "| setting | value |", "|---|---|",
              *[f"| {k} | {_fmt(v).replace('|', '/')} |" for k, v in rows], ""]
    lines += _usage_lines(meta, base, base_path)
    return "\n".join(front + lines)


def _setting_rows(spec, meta: dict, cfg: dict) -> list[tuple]:
    """The card's settings table: the LoRA spec, template, training keys, data, final metrics, quantization damage."""
    rows = [("rank r", spec.rank), ("lora_alpha", spec.alpha), ("scale", spec.scale), ("dropout", spec.dropout),
            ("target modules", ", ".join(spec.target_modules)),
            ("layers", "all" if spec.layers is None else f"{spec.layers[0]}–{spec.layers[-1]}"),
            ("rsLoRA", spec.use_rslora), ("DoRA", spec.use_dora)]
    if meta.get("template"):
        rows.append(("template", meta["template"]))
    if meta.get("system_prompt"):
        rows.append(("system prompt", meta["system_prompt"]))
    training = cfg.get("training") or {}
    for key in ("steps", "epochs", "lr", "batch_size", "grad_accumulation", "seed"):
        if training.get(key) is not None:
            rows.append((f"training.{key}", training[key]))
    train = (meta.get("data") or {}).get("train") or {}
    if train:
        rows.append(("training data", f"{train.get('path')} ({train.get('examples', '?')} examples, "
                                      f"sha256 {str(train.get('sha256', ''))[:12]}…)"))
    metrics = meta.get("metrics") or {}
    for key in ("final_loss", "val_loss"):
        if metrics.get(key) is not None:
            rows.append((key.replace("_", " "), metrics[key]))
    if d := metrics.get("quantization_damage"):   # the QLoRA base against the float base (jobs/damage.py)
        rows += [("quantized base", f"{d['scheme']}: {d['quantizer']}"),
                 ("quantized base vs float: mean KL", d["mean_kl"]),
                 ("quantized base vs float: same argmax", f"{d['argmax_agree']:.1%} of {d['positions']} positions "
                                                          f"({d['records']} {d['source']} records)")]
    return rows


def _usage_lines(meta: dict, base: dict, base_path: str) -> list[str]:
    """How to load the adapter with PEFT, twinlora, mlx-lm (when its layout is there) and llama.cpp."""
    lines: list[str] = []
    # llama.cpp's converter resolves hub ids only (a local path fails its hub-id check): --base for those
    llama = "" if base.get("name") == base_path and not base_path.startswith("/") else f" --base {base_path}"
    lines += ["## Use it", "", "```python",
              "from peft import AutoPeftModelForCausalLM  # base resolved from base_model_name_or_path",
              'model = AutoPeftModelForCausalLM.from_pretrained("path/to/adapter")', "```", "",
              "```bash",
              "twinlora generate --adapter path/to/adapter --prompt \"...\"   # template and system prompt as trained",
              ]
    if (meta.get("files") or {}).get("mlx/adapters.safetensors"):
        lines.append(f"mlx_lm.generate --model {base_path} --adapter-path path/to/adapter/mlx --prompt \"...\"")
    lines += [f"python convert_lora_to_gguf.py path/to/adapter{llama}   # llama.cpp", "```", ""]
    return lines
