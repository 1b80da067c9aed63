"""Did tuning make the model forget? The measures, on material unrelated to the task, written once
for both backends (the backends only hand over logits):

- **perplexity** of general prose (French, English, German; `data/general/prose-*.txt`), cut into
  chunks of `CHUNK` tokens: per chunk, the summed negative log-likelihood of every token after
  the first and the token count (the items a bootstrap resamples);
- **drift**: mean per-token KL(base ‖ tuned) over the base model's own greedy answer to each
  general prompt (`prompts.jsonl`), teacher-forced through both models;
- **multiple choice** (`mcq.jsonl`), scored as lm-evaluation-harness scores a multiple-choice
  task: context "Question: …\\nAnswer:", each choice " <text>" as the continuation, its summed
  log-likelihood; `acc` picks the highest sum, `acc_norm` the highest sum divided by the
  continuation's length in characters. The pair is tokenized as the harness's `_encode_pair`
  does: the whole string, with the context's own tokens cut off the front.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import DataError
from common.runs.io import iter_jsonl

GENERAL_DIR = Path(__file__).resolve().parents[2] / "data" / "general"
LANGUAGES = ("fr", "en", "de")
CHUNK = 256


@dataclass(frozen=True)
class General:
    prose: dict[str, str]      # language → text
    prompts: list[dict]        # {"id", "lang", "prompt"}
    mcq: list[dict]            # {"id", "question", "choices", "answer"}

    def sha256(self) -> str:
        """One digest of the material's content: base scores cached for other material are never reused."""
        import hashlib
        import json
        text = json.dumps([self.prose, self.prompts, self.mcq], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_general(directory: str | Path = GENERAL_DIR) -> General:
    """The shipped general material, checked (one line naming the file and record when broken)."""
    d = Path(directory)
    fix = "restore data/general from the twinlora repository (data/README.md says what it holds)"
    prose = {}
    for lang in LANGUAGES:
        path = d / f"prose-{lang}.txt"
        if not path.is_file():
            raise DataError("general text missing", where=str(path), fix=fix)
        prose[lang] = path.read_text(encoding="utf-8")
    prompts = [row for _, row in iter_jsonl(d / "prompts.jsonl")]
    mcq = []
    for line, row in iter_jsonl(d / "mcq.jsonl"):
        ok = (isinstance(row.get("choices"), list) and len(row["choices"]) >= 2 and isinstance(row.get("answer"), int)
              and 0 <= row["answer"] < len(row["choices"]) and isinstance(row.get("question"), str))
        if not ok:
            raise DataError('needs "question", a list of "choices" and the 0-based index "answer" of the right one',
                            where=f"{d / 'mcq.jsonl'}:{line}", fix=fix)
        mcq.append(row)
    return General(prose, prompts, mcq)


# ---------------------------------------------------------------- log-probabilities

def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def token_logprobs(logits: np.ndarray, ids, start: int = 0) -> np.ndarray:
    """log p(ids[t] | ids[:t]) for t = start+1 … T−1, from one sequence's logits [≥T, V] (rows past
    T, a batch's right padding, are ignored). Only the target's log-probability is formed: a
    logsumexp per row, no [T, V] log-softmax (the costly part on a large vocabulary)."""
    ids = np.asarray(ids)
    z = np.asarray(logits[start:len(ids) - 1], dtype=np.float64)
    top = z.max(axis=-1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=-1))
    return z[np.arange(len(z)), ids[start + 1:]] - lse


def kl_per_token(base_logits: np.ndarray, tuned_logits: np.ndarray) -> np.ndarray:
    """KL(p_base ‖ p_tuned) at every position of [T, V] logits (nats)."""
    lp, lq = log_softmax(base_logits), log_softmax(tuned_logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


# ---------------------------------------------------------------- multiple choice

def mc_context(item: dict) -> str:
    return f"Question: {item['question']}\nAnswer:"


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness's `_encode_pair`: trailing spaces
    of the context move to the continuation, the whole string is tokenized and the context's
    tokens cut off its front (so a token spanning the boundary belongs to the continuation)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = list(tokenizer(context + continuation)["input_ids"])
    ctx = list(tokenizer(context)["input_ids"])
    return whole[:len(ctx)], whole[len(ctx):]


def mc_pick(logliks: list[float], choices: list[str]) -> tuple[int, int]:
    """(acc pick, acc_norm pick): argmax of the summed log-likelihood, and of it divided by the
    choice's length in characters (the harness's acc_norm); the first wins a tie, as numpy's argmax."""
    ll = np.asarray(logliks, dtype=np.float64)
    lengths = np.asarray([len(" " + c) for c in choices], dtype=np.float64)
    return int(np.argmax(ll)), int(np.argmax(ll / lengths))


# ---------------------------------------------------------------- prose

def prose_chunks(tokenizer, text: str, size: int = CHUNK) -> list[list[int]]:
    """The text's token ids (with the tokenizer's BOS when it adds one) cut into chunks of `size`
    tokens; a last chunk under a quarter of `size` is merged into the one before."""
    ids = list(tokenizer(text)["input_ids"])
    chunks = [ids[i: i + size] for i in range(0, len(ids), size)]
    if len(chunks) > 1 and len(chunks[-1]) < size // 4:
        last = chunks.pop()
        chunks[-1] = chunks[-1] + last
    return chunks


def perplexity(nll_sums: list[float], counts: list[int]) -> float:
    """exp of the token-weighted mean negative log-likelihood."""
    return float(np.exp(sum(nll_sums) / max(sum(counts), 1)))
