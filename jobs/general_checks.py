"""The forgetting checks of `study`, run on one backend: the base model and each tuned adapter over
one loaded base (`add_adapter`, no reload), scored on the shipped general material
(`common.evaluation.forgetting` defines the measures and holds the arithmetic; this module only feeds the
backend and writes one JSON per system, so an interrupted study keeps what it finished).

The base model's greedy answers to the general prompts are generated once (on the study's first
backend) and saved as token ids; every backend then teacher-forces the same ids through the base
and the tuned model, so the drift figures of the two backends are comparable.

Cost (the study's dearest stage on a CPU): several sequences go through one forward, right-padded
(a causal model's real positions never see the padding, so each row's log-probabilities are those
of the sequence alone); drift computes the base's logits once per answer for every tuned system;
the base-side material (greedy answers, the base's scores) is computed once per base model and kept
in the twinlora cache (`BaseCache`), keyed by the model's files, the material and the settings.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from common.evaluation import forgetting as fg
from common.runs.io import read_json, write_json

ANSWERS = "base-answers.json"
PER_FORWARD = {"prose": 4, "mcq": 8, "drift": 4, "generate": 12}  # prose chunks / MC items / answers / prompts
MODEL_FILES = ("config.json", "generation_config.json", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json",
               "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")
FORMAT = 1  # bump when a score's computation changes: cached base material made before is then not reused


# ------------------------------------------------------------------ batched log-probabilities
def padded(seqs: list[list[int]], pad: int) -> np.ndarray:
    """Right-padded int32 batch [len(seqs), longest]."""
    batch = np.full((len(seqs), max(map(len, seqs))), pad, dtype=np.int32)
    for j, s in enumerate(seqs):
        batch[j, :len(s)] = s
    return batch


def batched_logprobs(be, seqs: list[list[int]], starts: list[int], per_forward: int, pad: int) -> list[np.ndarray]:
    """Each sequence's token log-probabilities from position starts[j]+1 on, `per_forward`
    sequences per forward."""
    out = []
    for i in range(0, len(seqs), per_forward):
        part = seqs[i:i + per_forward]
        logits = be.logits(padded(part, pad))
        out += [fg.token_logprobs(logits[j], s, starts[i + j]) for j, s in enumerate(part)]
    return out


def _pad(tokenizer) -> int:
    return tokenizer.pad_token_id or 0


def prose_scores(be, tokenizer, general: fg.General) -> list[dict]:
    """Summed NLL and token count of every prose chunk under the active model."""
    keys = [(lang, i, ids) for lang, text in general.prose.items()
            for i, ids in enumerate(fg.prose_chunks(tokenizer, text))]
    seqs = [ids for _, _, ids in keys]
    lps = batched_logprobs(be, seqs, [0] * len(seqs), PER_FORWARD["prose"], _pad(tokenizer))
    return [{"lang": lang, "chunk": i, "nll": float(-lp.sum()), "tokens": len(lp)}
            for (lang, i, _), lp in zip(keys, lps)]


def mcq_scores(be, tokenizer, general: fg.General) -> list[dict]:
    """Each item's summed continuation log-likelihood per choice, and the acc / acc_norm picks."""
    seqs, starts = [], []
    for item in general.mcq:
        for c in item["choices"]:
            ctx, cont = fg.encode_pair(tokenizer, fg.mc_context(item), " " + c)
            seqs.append(ctx + cont)
            starts.append(len(ctx) - 1)  # the position that predicts the continuation's first token
    per_forward = PER_FORWARD["mcq"] * max(len(item["choices"]) for item in general.mcq) if general.mcq else 1
    lps = iter(batched_logprobs(be, seqs, starts, per_forward, _pad(tokenizer)))
    rows = []
    for item in general.mcq:
        logliks = [float(next(lps).sum()) for _ in item["choices"]]
        pick, pick_norm = fg.mc_pick(logliks, item["choices"])
        rows.append({"id": item["id"], "logliks": logliks, "answer": item["answer"], "pick": pick,
                     "pick_norm": pick_norm, "acc": float(pick == item["answer"]),
                     "acc_norm": float(pick_norm == item["answer"])})
    return rows


# ------------------------------------------------------------------ drift
def base_answers(be, tokenizer, general: fg.General, max_new_tokens: int) -> list[dict]:
    """The base model's greedy answers to the general prompts (chat template, no system prompt),
    several prompts at once where the backend generates in batches."""
    from common.data.formats import user_turn
    from common.training.tokenize import Tokenizer
    from jobs.session import eos_ids
    tk, stops = Tokenizer(tokenizer, "chat"), eos_ids(tokenizer)
    prompts = [tk.encode_prompt(user_turn(p["prompt"], p["id"])) for p in general.prompts]
    from jobs.evaluation import generate_chunk
    step = PER_FORWARD["generate"] if be.capabilities.batched_generation else 1
    outs = []
    with be.base_only():
        for i in range(0, len(prompts), step):
            part = prompts[i:i + step]
            outs += generate_chunk(be, part, [max_new_tokens] * len(part), stops, step > 1)
    rows = []
    for p, ids, out in zip(general.prompts, prompts, outs):
        answer = [t for t in out if t not in stops]
        rows.append({"id": p["id"], "prompt_ids": ids, "answer_ids": answer,
                     "answer": tokenizer.decode(answer, skip_special_tokens=True)})
    return rows


def drift_scores(be, answers: list[dict], adapters: list[str]) -> dict[str, list[dict]]:
    """Mean per-token KL(base ‖ tuned) over each base answer, for each named adapter; the base's
    logits are computed once per answer, whatever the number of adapters."""
    kept = [a for a in answers if a["answer_ids"]]
    out: dict[str, list[dict]] = {n: [] for n in adapters}
    step = PER_FORWARD["drift"]
    for i in range(0, len(kept), step):
        part = kept[i:i + step]
        batch = padded([a["prompt_ids"] + a["answer_ids"] for a in part], 0)
        spans = [(len(a["prompt_ids"]) - 1, len(a["prompt_ids"]) + len(a["answer_ids"]) - 1) for a in part]
        with be.base_only():
            logits = be.logits(batch)
        base = [logits[j, lo:hi] for j, (lo, hi) in enumerate(spans)]  # the positions that predict the answer
        for name in adapters:
            be.set_active_adapter(name)
            tuned = be.logits(batch)
            for j, (a, (lo, hi)) in enumerate(zip(part, spans)):
                kl = fg.kl_per_token(base[j], tuned[j, lo:hi])
                out[name].append({"id": a["id"], "kl": float(kl.mean()), "tokens": int(len(kl))})
    return out


# ------------------------------------------------------------------ the base's material, cached
class BaseCache:
    """The base-side results (greedy answers, the base's scores) of one base model on one backend,
    kept under the twinlora cache (never in a user folder): the key holds the model's weights and
    other files, the material's digest, the settings and FORMAT; another base, other material or
    other settings miss, and every entry is checked against its full key when read."""

    def __init__(self, model_dir: Path, backend: str, general: fg.General, root: Path | None = None):
        from common.models.resolve import cache_root, weights_hash
        self.root = Path(root or os.environ.get("TWINLORA_FORGETTING_CACHE") or cache_root() / "forgetting")
        others = hashlib.sha256()
        for f in sorted(p for p in Path(model_dir).iterdir() if p.name in MODEL_FILES and p.is_file()):
            others.update(f"{f.name}:{f.stat().st_size}:{hashlib.sha256(f.read_bytes()).hexdigest()};".encode())
        self.base = {"format": FORMAT, "backend": backend, "weights": weights_hash(Path(model_dir)),
                     "model_files": others.hexdigest(), "material": general.sha256(), "chunk": fg.CHUNK}

    def _path(self, key: dict) -> Path:
        return self.root / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest() + ".json")

    def get(self, what: str, **settings):
        key = {**self.base, "what": what, **settings}
        try:
            saved = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return saved.get("data") if isinstance(saved, dict) and saved.get("key") == key else None

    def put(self, what: str, data, **settings) -> None:
        key = {**self.base, "what": what, **settings}
        try:
            write_json(self._path(key), {"key": key, "data": data})
        except OSError:
            pass  # no writable cache: computed again next time


def _cached(cache: BaseCache, what: str, compute, echo, **settings):
    data = cache.get(what, **settings)
    if data is None:
        data = compute()
        cache.put(what, data, **settings)
    else:
        echo(f"[study] {what}: from the cache ({cache.root}), computed earlier for this base and material")
    return data


# ------------------------------------------------------------------ the stage
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
        cache = BaseCache(opened.model_dir, backend, general)
        if not answers_path.is_file():
            echo(f"[study] general prompts: the base model's greedy answers ({len(general.prompts)}, {backend})")
            write_json(answers_path, _cached(cache, "base answers", lambda: base_answers(be, tok, general, max_new_tokens),
                                             echo, max_new_tokens=max_new_tokens, per_forward=PER_FORWARD["generate"]))
        tuned = {n: a for n, a in todo.items() if a is not None}
        for name, adapter in tuned.items():
            add_adapter(opened, name, adapter)
        if tuned:
            echo(f"[study] drift on {backend}: {', '.join(tuned)} against the base")
        drift = drift_scores(be, read_json(answers_path, ANSWERS), list(tuned)) if tuned else {}
        for name, adapter in todo.items():
            echo(f"[study] forgetting checks: {name} on {backend} (general prose, {len(general.mcq)} "
                 f"multiple-choice items{', drift' if adapter else ''})")
            if adapter is not None:
                be.set_active_adapter(name)
                scores = {"prose": prose_scores(be, tok, general), "mcq": mcq_scores(be, tok, general),
                          "drift": drift[name]}
            else:
                scores = _cached(cache, "base scores", lambda: _base_scores(be, tok, general), echo)
            write_json(out_dir / f"{name}.json", {"system": name, "backend": backend, "adapter": str(adapter or ""),
                                                  **scores})
    return {n: read_json(out_dir / f"{n}.json", f"{n}.json") for n in systems}


def _base_scores(be, tok, general: fg.General) -> dict:
    with be.base_only():
        return {"prose": prose_scores(be, tok, general), "mcq": mcq_scores(be, tok, general), "drift": None}
