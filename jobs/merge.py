"""`merge`: fold an adapter into its base and save a full HF model (safetensors + config +
tokenizer), written to a temporary directory and renamed when complete.

With `quantize` the adapter is merged into the base as it was quantized for training
(de-quantized 4-bit weights + adapter, what a QLoRA adapter was trained against), saved in the
base's original dtype; the merge then measures what the 4-bit base lost against the unquantized
merge (max |Δlogit|, KL on fixed probe prompts) and records it in twinlora_merge.json."""
from __future__ import annotations

import shutil
from pathlib import Path

from common.runs.io import atomic_dir, write_json


def probe_ids(tokenizer) -> list[list[int]]:
    """Token ids of the parity prompts (plain text, no template): the precision probe."""
    from jobs.parity import PROMPTS
    return [list(tokenizer(p)["input_ids"]) for p in PROMPTS]


def precision_lost(backend: str, merged_dir: Path, model: str, adapter: str, tokenizer) -> dict:
    """Logits of the merged (quantized-base) model against the unquantized base + adapter, i.e.
    the unquantized merge, on the probe prompts; models are loaded one at a time."""
    import numpy as np

    from jobs.parity import compare_logits
    from jobs.session import open_model

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


def gemma_note(model_dir: Path) -> str | None:
    """What a merged Gemma 3 cannot carry: mlx-lm's bfloat16 embedding scale (docs/parity.md)."""
    from common.models.families import family, read_raw
    if not family(read_raw(model_dir).get("model_type")).mlx_scale_bfloat16:
        return None
    return ("plain mlx-lm reads this Gemma 3 with its embedding scale sqrt(hidden_size) rounded to bfloat16, "
            "not transformers' float32 value that twinlora trains with on both backends; load it with twinlora "
            "(either backend) or transformers for the exact model")


def for_plain_mlx_lm(model_dir: Path) -> str:
    """Rewrite a merged Gemma 3 text model so that plain mlx-lm computes exactly it: mlx-lm scales
    the embeddings by bfloat16(sqrt(hidden)) instead of sqrt(hidden), so the input embeddings are
    stored pre-multiplied by sqrt(hidden) / bfloat16(sqrt(hidden)) and the output head keeps the
    original matrix (untied: `lm_head.weight`). transformers reads this directory as another model."""
    import json

    import numpy as np
    from safetensors.numpy import load_file, save_file

    from common.models.families import family
    from common.runs.io import atomic_path
    cfg = json.loads((model_dir / "config.json").read_text())
    if not family(cfg.get("model_type")).mlx_reader_rewrite:
        return "the same directory serves every reader for this family"
    hidden = int(cfg["hidden_size"])
    ratio = np.float32(np.float32(hidden ** 0.5) / _bfloat16(hidden ** 0.5))
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors = load_file(str(f))
        if "model.embed_tokens.weight" not in tensors:
            continue
        emb = tensors["model.embed_tokens.weight"]
        tensors.setdefault("lm_head.weight", emb.copy())
        tensors["model.embed_tokens.weight"] = (emb.astype(np.float32) * ratio).astype(emb.dtype)
        with atomic_path(f) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
    cfg["tie_word_embeddings"] = False
    write_json(model_dir / "config.json", cfg)
    return (f"for plain mlx-lm: input embeddings pre-scaled by {float(ratio):.6f} (sqrt({hidden}) / its bfloat16 "
            "rounding) and untied from the output head; transformers and twinlora read this directory as "
            "another model (merge with --reader any for them)")


def _bfloat16(x: float) -> float:
    """x rounded to bfloat16 (round to nearest even), as mlx's mx.array(x, mx.bfloat16)."""
    import numpy as np
    bits = int(np.array(x, np.float32).view(np.uint32))
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return float(np.array(bits, np.uint32).view(np.float32))


def merge_adapter(backend: str, model: str, adapter: str, output: Path, allow_base_mismatch: bool = False,
                  quantize: str | None = None, reader: str = "any") -> dict:
    """Merge and save; returns what twinlora_merge.json records."""
    from common.models.resolve import resolve_model
    from backends import canonical
    from common.adapters.base import check_adapter_scheme, trained_scheme
    from common.runs.ownership import check_output_dir
    from common.models.quantize import resolved_name
    from jobs.session import open_model
    # before loading anything: never over the base or the adapter, never over what is not ours
    check_output_dir(output, "merged", "--output", inputs=[adapter, model, resolve_model(model)])
    if reader == "mlx-lm":
        from common.models.families import family
        from common.models.resolve import read_model_config
        kind = read_model_config(resolve_model(model)).get("model_type")
        if family(kind).embedding_scale and not family(kind).mlx_reader_rewrite:
            from common.errors import ConfigError
            raise ConfigError(f"--reader mlx-lm is implemented for Gemma 3 text models (gemma3_text), not {kind}",
                              where="--reader", fix="merge with --reader any and load the result with twinlora "
                                                    "or transformers")
    scheme = resolved_name(quantize, canonical(backend))
    check_adapter_scheme(adapter, scheme, f"--quantize {quantize} on {canonical(backend)}", True)
    opened = open_model(backend, model, quantize=quantize, adapter=adapter, allow_base_mismatch=allow_base_mismatch)
    trained_on = (((opened.meta or {}).get("config") or {}).get("model") or {}).get("quantize")
    info = {"base_model": model, "adapter": str(adapter), "backend": backend, "quantized_base": quantize,
            "quantized_base_scheme": scheme, "adapter_trained_on_quantized_base": trained_on,
            "adapter_trained_on_scheme": trained_scheme(adapter),
            "adapter_meta": {k: opened.meta.get(k) for k in ("base_model", "template")} if opened.meta else None}
    with atomic_dir(output) as tmp:
        opened.backend.merge_and_save(tmp)
        opened.tokenizer.save_pretrained(str(tmp))
        # transformers 5 saves tokenizer.json only; GGUF export of SentencePiece models (Gemma)
        # needs the base's tokenizer.model, so it travels with the merged model
        spm = Path(opened.model_dir) / "tokenizer.model"
        if spm.is_file() and not (tmp / "tokenizer.model").exists():
            shutil.copyfile(spm, tmp / "tokenizer.model")
        tokenizer = opened.tokenizer
        del opened  # the probe loads the merged and the unquantized models one at a time
        if quantize:
            info["precision_lost"] = precision_lost(backend, tmp, model, adapter, tokenizer)
        if reader == "mlx-lm":
            info["reader"], info["note"] = "mlx-lm", for_plain_mlx_lm(tmp)
        elif gemma_note(tmp):
            info["note"] = gemma_note(tmp)
        write_json(tmp / "twinlora_merge.json", info)
    return info


def run_merge(backend: str, model, adapter: str, output: str, allow_base_mismatch: bool, quantize, reader: str,
              echo) -> None:
    """`cli.py merge`: the base the adapter records unless --model, the merge under the output's
    lock, then what the user should know about it."""
    from common.runs.lock import OutputLock
    from jobs.session import base_for
    model = base_for(model, adapter, lambda m: echo(m, err=True))
    with OutputLock(output):
        info = merge_adapter(backend, model, adapter, Path(output), allow_base_mismatch, quantize, reader=reader)
    if info.get("adapter_trained_on_quantized_base") and not quantize:
        trained = info.get("adapter_trained_on_scheme") or info["adapter_trained_on_quantized_base"]
        echo(f"[twinlora] note: the adapter was trained on a {trained} base; merged into the unquantized base "
             f"(the usual QLoRA merge). --quantize {trained} merges into the de-quantized base it was trained "
             "against instead.")
    if quantize:
        lost = info["precision_lost"]
        echo(f"[twinlora] precision lost by the {quantize} base, against the unquantized merge "
             f"({lost['probe_prompts']} probe prompts): max |Δlogit| {lost['max_abs_logit_diff']:.4g}, "
             f"mean KL {lost['mean_kl']:.3g}, same argmax {lost['argmax_agree']:.1%}")
    if info.get("note"):
        echo(f"[twinlora] note: {info['note']}")
    echo(f"[twinlora] merged model: {output}")
