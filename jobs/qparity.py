"""Parity for QLoRA, stated honestly. MLX's `4bit` (mlx-nvfp4; affine group 64 before issue 33) and
bitsandbytes' NF4 (+ double quantization) are different quantizers, so the two 4-bit models are not
the same model and their logits cannot meet the fp32 parity tolerance. What can be checked:

- each backend's quantization error: its 4-bit base + adapter against its unquantized base + the
  same adapter (what 4 bits cost on that backend), and the two 4-bit models against each other;
- the adapter math, exactly: both backends loaded on the *same* de-quantized weights (dequant(Q(W))
  of one backend's quantizer, written as a plain float model), with the usual parity tolerance.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from backends.capabilities import PARITY_PAIR
from common.runs.io import atomic_dir
from common.models.quantize import describe, schemes_of
from jobs.parity import compare_logits, prompt_ids, run_parity

BACKENDS = PARITY_PAIR


def dequantized_base(backend: str, model: str, out_dir: Path) -> Path:
    """Write the base as `backend`'s 4-bit quantizer leaves it, de-quantized to the base's float
    dtype: a plain HF directory any backend loads (the weights a QLoRA adapter trained there saw)."""
    from jobs.session import open_model
    opened = open_model(backend, model, quantize="4bit")
    with atomic_dir(out_dir) as tmp:
        opened.backend.merge_and_save(tmp)  # no adapter attached: the de-quantized base alone
        opened.tokenizer.save_pretrained(str(tmp))
        spm = Path(opened.model_dir) / "tokenizer.model"
        if spm.is_file() and not (tmp / "tokenizer.model").exists():
            shutil.copyfile(spm, tmp / "tokenizer.model")
    return Path(out_dir)


def _summary(rows: list[dict]) -> dict:
    return {"max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in rows),
            "mean_kl": float(np.mean([r["mean_kl"] for r in rows])),
            "argmax_agree": float(np.mean([r["argmax_agree"] for r in rows]))}


def quantization_errors(model: str, adapter: str | None, prompts: list[str]) -> dict:
    """Per backend, its 4-bit base (+ adapter) against its unquantized base (+ adapter); and the two
    4-bit models against each other. Models are loaded one at a time."""
    from jobs.session import open_model

    def logits(backend: str, **kw) -> tuple[list, object]:
        opened = open_model(backend, model, adapter=adapter, **kw)
        ids = prompt_ids(opened.tokenizer, prompts)
        return [opened.backend.logits(np.array([i]))[0] for i in ids], opened.backend

    out, quantized = {}, {}
    for b in BACKENDS:
        q, be = logits(b, quantize="4bit")
        quantizer = describe("4bit", b)
        del be
        full, _ = logits(b)
        out[b] = {"quantizer": quantizer, "against": "unquantized base" + (" + adapter" if adapter else ""),
                  **_summary([compare_logits(x, y) for x, y in zip(q, full)])}
        quantized[b] = q
    out["mlx_4bit_vs_torch_nf4"] = _summary([compare_logits(x, y) for x, y in zip(*(quantized[b] for b in BACKENDS))])
    return out


def every_scheme(model: str, prompts: list[str]) -> dict:
    """The damage of every scheme each backend runs (common/models/quantize.py): its quantized base against
    its float base on `prompts` (jobs/damage.py, no adapter), one model at a time."""
    from backends import get_backend
    from common.models.resolve import resolve_model
    from jobs import damage
    from jobs.session import open_model
    out = {}
    for b in BACKENDS:
        ids = prompt_ids(open_model(b, model).tokenizer, prompts)
        cls, model_dir = get_backend(b), resolve_model(model)
        ref = damage.float_logits(cls, model_dir, "float32", ids)
        for name in schemes_of(b):
            be = cls(model_dir, quantize=name)
            out[name] = {"backend": b, **damage.measure(be, ref, ids, be.scheme, "float32", "parity prompt"),
                         "base_weight_bytes": be.base_weight_bytes()}
            del be
    return out


def qlora_parity(model: str, adapter: str | None, prompts: list[str], max_new_tokens: int,
                 tol_logit: float, tol_kl: float, sources: tuple[str, ...] = BACKENDS) -> dict:
    """Quantization error per backend, then adapter parity on the same de-quantized weights of each
    quantizer in `sources`; passes when every same-weights parity passes."""
    from jobs.session import open_model
    rep = {"quantization": quantization_errors(model, adapter, prompts), "same_weights": {},
           "schemes": every_scheme(model, prompts)}
    with tempfile.TemporaryDirectory(prefix="twinlora-qparity-") as work:
        for src in sources:
            base = dequantized_base(src, model, Path(work) / f"{src}-4bit-dequantized")
            # the de-quantized base hashes differently from the base the adapter records: same model otherwise
            sessions = {b: open_model(b, str(base), adapter=adapter, allow_base_mismatch=True) for b in BACKENDS}
            rep["same_weights"][src] = run_parity(sessions, prompts, max_new_tokens, tol_logit, tol_kl)
            del sessions
    rep["pass"] = all(r["pass"] for r in rep["same_weights"].values())
    return rep
