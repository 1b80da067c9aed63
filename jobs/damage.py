"""Show the damage before training (issue 33): a QLoRA adapter can only be as good as the quantized
base it trains on, so `train` measures that base against the float base on a few of the user's own
records (validation, else training) — mean KL(float ‖ quantized) per position and how often the two
pick the same next token — prints one line, and records it (summary.json, twinlora.json, the card).
The float model is loaded after the quantized one (whose device checks come first) and let go at once.
"""
from __future__ import annotations

import gc

import numpy as np

from jobs.parity import compare_logits

RECORDS = 4        # records measured
MAX_TOKENS = 128   # tokens per record at most (a Gemma vocabulary × 128 positions is 134 MB in float32)


def damage_ids(valid_data: list, train_data: list) -> tuple[str, list[list[int]]]:
    """The records measured: the first few validation records, else training records (DPO pairs:
    the chosen side)."""
    source, rows = ("validation", valid_data) if valid_data else ("training", train_data)
    ids = [list(getattr(r, "chosen", r).ids[:MAX_TOKENS]) for r in rows[:RECORDS]]
    return source, [i for i in ids if len(i) > 1]


def float_logits(backend_cls, model_dir, dtype: str, ids: list[list[int]]) -> list[np.ndarray]:
    """The float base's logits on `ids`; the model is released before returning."""
    be = backend_cls(model_dir, dtype=dtype)
    out = [be.logits(np.array([i], dtype=np.int32))[0] for i in ids]
    del be
    gc.collect()
    return out


def measure(quantized_be, reference: list[np.ndarray], ids: list[list[int]], scheme, dtype: str,
            source: str) -> dict:
    """The quantized base (no adapter attached yet) against the float base's `reference` logits."""
    rows = [compare_logits(reference[k], quantized_be.logits(np.array([i], dtype=np.int32))[0])
            for k, i in enumerate(ids)]
    n = np.array([len(i) for i in ids], dtype=np.float64)   # positions per record: a per-position mean
    return {"scheme": scheme.name, "quantizer": scheme.label, "against": f"float base in {dtype}",
            "records": len(ids), "source": source, "positions": int(n.sum()),
            "mean_kl": float(np.dot(n, [r["mean_kl"] for r in rows]) / n.sum()),
            "argmax_agree": float(np.dot(n, [r["argmax_agree"] for r in rows]) / n.sum()),
            "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in rows)}


def describe(d: dict) -> str:
    """The one line `train` prints."""
    return (f"quantized base {d['scheme']} vs the {d['against']}, on {d['records']} {d['source']} records "
            f"({d['positions']} positions): mean KL {d['mean_kl']:.4g}, same argmax {d['argmax_agree']:.1%}")
