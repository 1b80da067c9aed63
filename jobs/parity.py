"""Cross-backend parity: the same base + the same adapter on MLX and PyTorch must give the same
logits (within a stated fp32 tolerance) and the same greedy text."""
from __future__ import annotations

import numpy as np

from common.data.formats import user_turn
from jobs.defaults import MAX_NEW_TOKENS

# Stated tolerances for float32 on CPU: the two libraries use different matmul/accumulation
# orders, so logits agree to ~1e-4 on the 135M model; these bounds leave a margin of ~10x.
MAX_ABS_LOGIT_TOL = 2e-3
MEAN_KL_TOL = 1e-6
# Adapters trained on the two backends from the same init and data (float32, CPU), max |Δweight|:
# measured 5.2e-6 on the tiny test model after 8 steps at lr 1e-2 (tests/test_cross_resume.py).
ADAPTER_TOL = 2e-5

PROMPTS = [
    "What is the capital of France?",
    "Résume l'article L100-1 du code des relations entre le public et l'administration.",
    "Write a haiku about the sea.",
    "Question: Who were the Normans?\nContext: The Normans were the people who gave their name to Normandy.\nAnswer:",
]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def compare_logits(a: np.ndarray, b: np.ndarray, chunk: int = 64) -> dict:
    """max |Δlogit| and mean KL(a‖b) over positions; float64, `chunk` positions at a time (a
    262k-vocabulary Gemma over a 2080-position probe would otherwise need gigabytes)."""
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    diff, kls, agree = 0.0, [], []
    for i in range(0, a.shape[0], chunk):
        x, y = a[i:i + chunk], b[i:i + chunk]
        la, lb = log_softmax(x), log_softmax(y)
        kls.append((np.exp(la) * (la - lb)).sum(-1))
        diff = max(diff, float(np.abs(x.astype(np.float64) - y).max()))
        agree.append(x.argmax(-1) == y.argmax(-1))
    return {"max_abs_logit_diff": diff, "mean_kl": float(np.concatenate(kls).mean()),
            "argmax_agree": float(np.concatenate(agree).mean())}


def prompt_ids(tokenizer, prompts: list[str], template: str | None = None) -> list[list[int]]:
    """Prompts rendered as a user turn through the chat template, or as raw text (with the
    tokenizer's BOS) for a base model that has no chat template."""
    from common.training.tokenize import Tokenizer
    if template is None:
        template = "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    tk = Tokenizer(tokenizer, template)
    return [tk.encode_prompt(user_turn(p, f"prompt {i}")) for i, p in enumerate(prompts)]


def long_probe_length(text: dict) -> tuple[int, list[str]]:
    """How many positions the long probe must cover, and why: past the sliding window (the masks
    and the sliding layers' rope differ only there) and, for llama3 rope scaling, past 2048 (where
    the scaled low frequencies matter). 0 when nothing asks for it."""
    rp = text.get("rope_parameters") or {}
    kinds = {v.get("rope_type") for v in rp.values() if isinstance(v, dict)} | {rp.get("rope_type")}
    need, why = 0, []
    window = text.get("sliding_window")
    slides = "sliding_attention" in (text.get("layer_types") or []) or text.get("use_sliding_window")
    if window and slides:
        need, why = max(need, int(window) + 32), why + [f"sliding window {window}"]
    if kinds & {"llama3", "yarn", "dynamic", "longrope"}:  # position-dependent scalings
        need, why = max(need, 2048 + 32), why + [f"rope scaling {sorted(k for k in kinds if k)}"]
    limit = int(text.get("max_position_embeddings") or need)
    return min(need, limit), why


def long_probe_ids(tokenizer, n: int) -> list[int]:
    """`n` token ids of real text (the parity prompts repeated), starting with BOS when the tokenizer has one."""
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    chunk = tokenizer("\n".join(PROMPTS) + "\n", add_special_tokens=False)["input_ids"]
    while len(ids) < n:
        ids += chunk
    return ids[:n]


def family_check(model_dir) -> dict:
    """Is this architecture one whose parity the tests prove (common/models/families.py)?"""
    from common.models.families import VERIFIED, family_report
    rep = family_report(model_dir)
    out = {"model_type": rep["model_type"], "verified": rep["verified"], "problems": rep["problems"]}
    if not rep["verified"]:
        out["warning"] = (f"model_type {rep['model_type']!r} is not one twinlora proves equal on both backends "
                          f"({', '.join(VERIFIED)}): the figures below are measured, not guaranteed")
    out["long_probe"] = long_probe_length(rep["text"])
    return out


def run_parity(sessions: dict, prompts: list[str], max_new_tokens: int = MAX_NEW_TOKENS["parity"],
               tol_logit: float = MAX_ABS_LOGIT_TOL, tol_kl: float = MEAN_KL_TOL) -> dict:
    """`sessions`: {"mlx": Opened, "torch": Opened} with the same base and adapter."""
    from jobs.session import PROMPT_FIX, eos_ids, fit_context
    (na, a), (nb, b) = sessions.items()
    tok = a.tokenizer
    family = family_check(a.model_dir)
    ids_list = prompt_ids(tok, prompts)
    stops = eos_ids(tok)
    rows, worst_logit, kls = [], 0.0, []
    # every prompt fitted to the context before any work, as generate does (E168)
    budgets = [fit_context(a, len(ids), max_new_tokens, "--prompt", PROMPT_FIX) for ids in ids_list]
    for text, ids, budget in zip(prompts, ids_list, budgets):
        arr = np.array([ids], dtype=np.int32)
        cmp = compare_logits(a.backend.logits(arr), b.backend.logits(arr))
        ga = a.backend.generate(ids, budget, stops)
        gb = b.backend.generate(ids, budget, stops)
        rows.append({"prompt": text, **cmp, f"{na}_text": tok.decode(ga), f"{nb}_text": tok.decode(gb),
                     "same_text": ga == gb})
        worst_logit = max(worst_logit, cmp["max_abs_logit_diff"])
        kls.append(cmp["mean_kl"])
    n_long, why = family.pop("long_probe")
    long = None
    if n_long:
        arr = np.array([long_probe_ids(tok, n_long)], dtype=np.int32)
        long = {"tokens": n_long, "why": why, **compare_logits(a.backend.logits(arr), b.backend.logits(arr))}
        worst_logit = max(worst_logit, long["max_abs_logit_diff"])
        kls.append(long["mean_kl"])
    ok = worst_logit <= tol_logit and max(kls) <= tol_kl and all(r["same_text"] for r in rows)
    return {"backends": [na, nb], "family": family, "max_abs_logit_diff": worst_logit, "mean_kl": float(np.mean(kls)),
            "max_kl": float(max(kls)), "tolerance": {"max_abs_logit_diff": tol_logit, "mean_kl": tol_kl},
            "same_greedy_text": all(r["same_text"] for r in rows), "pass": ok, "prompts": rows,
            "long_probe": long}


def loss_curve_gap(log_a: list[dict], log_b: list[dict]) -> dict:
    """Compare two runs' per-step training losses (same config, same init, same batches)."""
    la = {r["step"]: r["loss"] for r in log_a if r.get("event") == "train"}
    lb = {r["step"]: r["loss"] for r in log_b if r.get("event") == "train"}
    steps = sorted(set(la) & set(lb))
    if not steps:
        return {"steps": 0}
    diffs = [abs(la[s] - lb[s]) for s in steps]
    rel = [abs(la[s] - lb[s]) / max(abs(la[s]), 1e-12) for s in steps]
    out = {"steps": len(steps), "max_abs_loss_gap": max(diffs), "max_rel_loss_gap": max(rel),
           "first": [la[steps[0]], lb[steps[0]]], "last": [la[steps[-1]], lb[steps[-1]]]}
    from common.training.objectives import DPO_METRICS   # DPO runs: the rewards too, under TRL's names
    ra = {r["step"]: r for r in log_a if r.get("event") == "train"}
    rb = {r["step"]: r for r in log_b if r.get("event") == "train"}
    for k in DPO_METRICS:
        if all(k in ra[s] and k in rb[s] for s in steps):
            out[f"max_abs_gap/{k}"] = max(abs(ra[s][k] - rb[s][k]) for s in steps)
    return out
