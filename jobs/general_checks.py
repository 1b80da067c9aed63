"""The forgetting checks of `study`, run on one backend: the base model and each tuned adapter over
one loaded base (`add_adapter`, no reload), scored on the shipped general material
(`common.forgetting` defines the measures and holds the arithmetic; this module only feeds the
backend and writes one JSON per system, so an interrupted study keeps what it finished).

The base model's greedy answers to the general prompts are generated once (on the study's first
backend) and saved as token ids; every backend then teacher-forces the same ids through the base
and the tuned model, so the drift figures of the two backends are comparable.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common import forgetting as fg
from common.io import read_json, write_json

ANSWERS = "base-answers.json"


def _logprobs(be, ids: list[int]) -> np.ndarray:
    return fg.token_logprobs(be.logits(np.asarray([ids], dtype=np.int32))[0], ids)


def prose_scores(be, tokenizer, general: fg.General) -> list[dict]:
    """Summed NLL and token count of every prose chunk under the active model."""
    rows = []
    for lang, text in general.prose.items():
        for i, ids in enumerate(fg.prose_chunks(tokenizer, text)):
            lp = _logprobs(be, ids)
            rows.append({"lang": lang, "chunk": i, "nll": float(-lp.sum()), "tokens": len(lp)})
    return rows


def mcq_scores(be, tokenizer, general: fg.General) -> list[dict]:
    """Each item's summed continuation log-likelihood per choice, and the acc / acc_norm picks."""
    rows = []
    pad = tokenizer.pad_token_id or 0
    for item in general.mcq:
        pairs = [fg.encode_pair(tokenizer, fg.mc_context(item), " " + c) for c in item["choices"]]
        seqs = [ctx + cont for ctx, cont in pairs]
        width = max(map(len, seqs))
        batch = np.full((len(seqs), width), pad, dtype=np.int32)
        for j, s in enumerate(seqs):
            batch[j, :len(s)] = s  # right padding: a causal model's earlier positions do not see it
        logits = be.logits(batch)
        logliks = [float(fg.token_logprobs(logits[j, :len(s)], s)[len(ctx) - 1:].sum())
                   for j, (s, (ctx, _)) in enumerate(zip(seqs, pairs))]
        pick, pick_norm = fg.mc_pick(logliks, item["choices"])
        rows.append({"id": item["id"], "logliks": logliks, "answer": item["answer"], "pick": pick,
                     "pick_norm": pick_norm, "acc": float(pick == item["answer"]),
                     "acc_norm": float(pick_norm == item["answer"])})
    return rows


def base_answers(be, tokenizer, general: fg.General, max_new_tokens: int) -> list[dict]:
    """The base model's greedy answers to the general prompts (chat template, no system prompt)."""
    from common.data.formats import user_turn
    from common.tokenize import Tokenizer
    from jobs.session import eos_ids
    tk, stops, rows = Tokenizer(tokenizer, "chat"), eos_ids(tokenizer), []
    prompts = [tk.encode_prompt(user_turn(p["prompt"], p["id"])) for p in general.prompts]
    with be.base_only():     # greedy: batched where the backend generates in batches (the same answers)
        if be.capabilities.batched_generation:
            groups = [prompts[i: i + 8] for i in range(0, len(prompts), 8)]
            outs = [a for g in groups for a in be.generate_batch(g, max_new_tokens, stops)]
        else:
            outs = [be.generate(ids, max_new_tokens, stops) for ids in prompts]
        for p, ids, out in zip(general.prompts, prompts, outs):
            answer = [t for t in out if t not in stops]
            rows.append({"id": p["id"], "prompt_ids": ids, "answer_ids": answer,
                         "answer": tokenizer.decode(answer, skip_special_tokens=True)})
    return rows


def drift_scores(be, answers: list[dict]) -> list[dict]:
    """Mean per-token KL(base ‖ tuned) over each base answer (the active adapter is the tuned model)."""
    rows = []
    for a in answers:
        if not a["answer_ids"]:
            continue
        ids = np.asarray([a["prompt_ids"] + a["answer_ids"]], dtype=np.int32)
        first = len(a["prompt_ids"]) - 1  # the position that predicts the answer's first token
        tuned = be.logits(ids)[0, first:-1]
        with be.base_only():
            base = be.logits(ids)[0, first:-1]
        kl = fg.kl_per_token(base, tuned)
        rows.append({"id": a["id"], "kl": float(kl.mean()), "tokens": int(len(kl))})
    return rows


def run_general(backend: str, model: str, systems: dict[str, Path | None], out_dir: Path, answers_path: Path,
                max_new_tokens: int = 48, echo=print) -> dict[str, dict]:
    """Score every system (name → adapter directory, None = the base) on this backend; a system
    whose file exists is kept. Returns name → scores."""
    from jobs.session import add_adapter, open_model
    todo = {n: a for n, a in systems.items() if not (out_dir / f"{n}.json").is_file()}
    if todo:
        general = fg.load_general()
        opened = open_model(backend, model)
        be, tok = opened.backend, opened.tokenizer
        if not answers_path.is_file():
            echo(f"[study] general prompts: the base model's greedy answers ({len(general.prompts)}, {backend})")
            write_json(answers_path, base_answers(be, tok, general, max_new_tokens))
        answers = read_json(answers_path, ANSWERS)
        for name, adapter in todo.items():
            echo(f"[study] forgetting checks: {name} on {backend} (general prose, {len(general.mcq)} "
                 f"multiple-choice items{', drift' if adapter else ''})")
            if adapter is not None:
                add_adapter(opened, name, adapter)
                be.set_active_adapter(name)
                scores = {"prose": prose_scores(be, tok, general), "mcq": mcq_scores(be, tok, general),
                          "drift": drift_scores(be, answers)}
            else:
                with be.base_only():
                    scores = {"prose": prose_scores(be, tok, general), "mcq": mcq_scores(be, tok, general),
                              "drift": None}
            write_json(out_dir / f"{name}.json", {"system": name, "backend": backend, "adapter": str(adapter or ""),
                                                  **scores})
    return {n: read_json(out_dir / f"{n}.json", f"{n}.json") for n in systems}
