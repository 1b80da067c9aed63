"""`merge`: fold an adapter into its base and save a full HF model (safetensors + config +
tokenizer), written to a temporary directory and renamed when complete.

With `quantize` the adapter is merged into the base as it was quantized for training
(de-quantized 4-bit weights + adapter, what a QLoRA adapter was trained against), saved in the
base's original dtype; the merge then measures what the 4-bit base lost against the unquantized
merge (max |Δlogit|, KL on fixed probe prompts) and records it in twinlora_merge.json."""
from __future__ import annotations

import shutil
from pathlib import Path

from common.io import atomic_dir, write_json


def probe_ids(tokenizer) -> list[list[int]]:
    """Token ids of the parity prompts (plain text, no template): the precision probe."""
    from common.parity import PROMPTS
    return [list(tokenizer(p)["input_ids"]) for p in PROMPTS]


def precision_lost(backend: str, merged_dir: Path, model: str, adapter: str, tokenizer) -> dict:
    """Logits of the merged (quantized-base) model against the unquantized base + adapter, i.e.
    the unquantized merge, on the probe prompts; models are loaded one at a time."""
    import numpy as np

    from common.parity import compare_logits
    from common.session import open_model

    probes = probe_ids(tokenizer)

    def logits(**kw) -> list:
        be = open_model(backend, **kw).backend
        return [be.logits(np.array([ids]))[0] for ids in probes]

    merged = logits(model=str(merged_dir))
    full = logits(model=model, adapter=adapter, allow_base_mismatch=True)
    rows = [compare_logits(a, b) for a, b in zip(merged, full)]
    return {"against": "unquantized base + adapter", "probe_prompts": len(rows),
            "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in rows),
            "mean_kl": float(np.mean([r["mean_kl"] for r in rows])),
            "argmax_agree": float(np.mean([r["argmax_agree"] for r in rows]))}


def merge_adapter(backend: str, model: str, adapter: str, output: Path, allow_base_mismatch: bool = False,
                  quantize: str | None = None) -> dict:
    """Merge and save; returns what twinlora_merge.json records."""
    from common.models import resolve_model
    from common.ownership import check_output_dir
    from common.session import open_model
    # before loading anything: never over the base or the adapter, never over what is not ours
    check_output_dir(output, "merged", "--output", inputs=[adapter, model, resolve_model(model)])
    opened = open_model(backend, model, quantize=quantize, adapter=adapter, allow_base_mismatch=allow_base_mismatch)
    trained_on = (((opened.meta or {}).get("config") or {}).get("model") or {}).get("quantize")
    info = {"base_model": model, "adapter": str(adapter), "backend": backend, "quantized_base": quantize,
            "adapter_trained_on_quantized_base": trained_on,
            "adapter_meta": {k: opened.meta.get(k) for k in ("base_model", "template")} if opened.meta else None}
    with atomic_dir(output) as tmp:
        opened.backend.merge_and_save(tmp)
        opened.tokenizer.save_pretrained(str(tmp))
        # transformers 5 saves tokenizer.json only; GGUF export of SentencePiece models (Gemma)
        # needs the base's tokenizer.model, so it travels with the merged model
        spm = Path(opened.backend.model_dir) / "tokenizer.model"
        if spm.is_file() and not (tmp / "tokenizer.model").exists():
            shutil.copyfile(spm, tmp / "tokenizer.model")
        tokenizer = opened.tokenizer
        del opened  # the probe loads the merged and the unquantized models one at a time
        if quantize:
            info["precision_lost"] = precision_lost(backend, tmp, model, adapter, tokenizer)
        write_json(tmp / "twinlora_merge.json", info)
    return info

