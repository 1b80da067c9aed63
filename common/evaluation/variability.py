"""How much a system's answers vary: several answers sampled for the same item (fixed temperature,
seeds 0 … N−1), compared with each other. A tuned model that learned the answer's form varies
less; the documents this product serves list "reduces output variability" among the reasons to
tune. Two numbers per item: the mean ROUGE-L F over every pair of answers (1 = all the same
words in the same order) and the distinct-answer rate (distinct answers after whitespace and case
folding ÷ N; 1/N = all identical, 1 = all different)."""
from __future__ import annotations

from itertools import combinations
from typing import Sequence


def answer_spread(answers: Sequence[str]) -> dict:
    from common.evaluation.metrics import rouge
    pairs = list(combinations(answers, 2))
    pairwise = rouge([a for a, _ in pairs], [b for _, b in pairs])["per_item"] if pairs else []
    distinct = {" ".join(a.casefold().split()) for a in answers}
    return {"pairwise_rougeL": sum(p["rougeL_f"] for p in pairwise) / len(pairwise) if pairwise else 1.0,
            "distinct_rate": len(distinct) / len(answers) if answers else 0.0}
