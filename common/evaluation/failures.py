"""Why a tuned model still gets an item wrong: every answer below a score threshold put in one
rule-based category, the first rule that matches, in this order:

1. empty — nothing was generated;
2. cut by the token limit — the answer reached max_new_tokens without ending;
3. copies the prompt — ≥ 80 % of the answer's words, in order, come from the question (ROUGE-L
   precision against the question);
4. wrong language — the answer's language (stop-word counts, French / English / German) is known
   and is not the reference's;
5. answer template not followed — most references open with one word (e.g. "Article"), and this
   answer does not;
6. cites an article absent from the reference — it cites an article number that neither the
   reference nor the question names;
7. other.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

from common.evaluation.citations import extract_citations

CATEGORIES = ("empty", "cut by the token limit", "copies the prompt", "wrong language",
              "answer template not followed", "cites an article absent from the reference", "other")
COPY_PRECISION = 0.8
STOPWORDS = {
    "fr": set("le la les des du un une est et en que qui dans pour pas sur au aux ce cette il elle sont de à par".split()),
    "en": set("the and is are of to in that it for with as on this be was by an not or".split()),
    "de": set("der die das und ist nicht ein eine zu den von mit sich des auf für im dem nur auch".split()),
}


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", (text or "").casefold())


def language(text: str) -> str | None:
    """The language whose stop words the text uses most (at least two of them), else None."""
    counts = Counter()
    for w in _words(text):
        for lang, words in STOPWORDS.items():
            counts[lang] += w in words
    if not counts:
        return None
    (best, n), *rest = counts.most_common() + [("", 0)]
    return best if n >= 2 and n > rest[0][1] else None


def opening_word(references: Sequence[str]) -> str | None:
    """The word most references open with, when more than half of them do."""
    firsts = Counter(w[0] for w in (_words(r) for r in references) if w)
    if not firsts:
        return None
    word, n = firsts.most_common(1)[0]
    return word if n > len(references) / 2 else None


def copies_prompt(prediction: str, question: str) -> bool:
    from common.evaluation.metrics import rouge
    if len(_words(prediction)) < 3 or not question:
        return False
    return rouge([prediction], [question])["per_item"][0]["rougeL_p"] >= COPY_PRECISION


def categorise(row: dict, opening: str | None) -> str:
    """The category of one predictions.jsonl row (prediction, reference, question, truncated)."""
    pred, ref = row.get("prediction") or "", row.get("reference") or ""
    question = row.get("question") or row.get("prompt") or ""
    if not pred.strip():
        return CATEGORIES[0]
    if row.get("truncated") or (row.get("scores") or {}).get("truncated"):
        return CATEGORIES[1]
    if copies_prompt(pred, question):
        return CATEGORIES[2]
    lp, lr = language(pred), language(ref)
    if lp and lr and lp != lr:
        return CATEGORIES[3]
    words = _words(pred)
    if opening and (not words or words[0] != opening):
        return CATEGORIES[4]
    if extract_citations(pred) - extract_citations(ref) - extract_citations(question):
        return CATEGORIES[5]
    return CATEGORIES[6]


def failure_table(rows: Sequence[dict], scores: Sequence[float | None], threshold: float, examples: int = 2) -> dict:
    """Every row whose score is below `threshold`, categorised: counts and `examples` per category."""
    opening = opening_word([r.get("reference") or "" for r in rows])
    found: dict[str, list[dict]] = {}
    for row, score in zip(rows, scores):
        if score is None or score >= threshold:
            continue
        found.setdefault(categorise(row, opening), []).append(
            {"id": row.get("id"), "score": score, "prediction": row.get("prediction"), "reference": row.get("reference")})
    return {"threshold": threshold, "opening_word": opening, "n_items": len(rows),
            "n_failed": sum(len(v) for v in found.values()),
            "categories": {c: {"count": len(found[c]), "examples": found[c][:examples]} for c in CATEGORIES if c in found}}
