"""Every metric in one table: how it is computed (common.evaluation.metrics), its options, the per-item keys
kept in predictions.jsonl, and for each number it reports which way is better, its scale and where
it is shown. The rest reads this table: the `--metrics` names, `score_all`, compare's arrows,
points and chart (common.evaluation.reports), the sweep's columns, the study's headlines and the metrics a
recipe gets by default (jobs/), so a new metric is one row here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from common.evaluation import metrics as m
from common.errors import DataError, UserError


@dataclass(frozen=True)
class Score:
    """One reported number (a key of metrics.json)."""
    key: str
    direction: int          # +1: higher is better, -1: lower is better, 0: descriptive (lengths)
    points: float = 1.0     # points per unit: 0–1 rates ×100, SQuAD/BLEU (already 0–100) and losses ×1
    chart: bool = False     # drawn in compare.png
    headline: bool = False  # a column of the sweep table


@dataclass(frozen=True)
class Headline:
    """A study score: a per-item key of predictions.jsonl, averaged over items (or a subset)."""
    key: str
    label: str
    subset: str | None = None  # "has_answer" / "no_answer": SQuAD v2's HasAns / NoAns items only
    scale: float = 1.0         # shown × scale (SQuAD is already ×100)


@dataclass(frozen=True)
class Metric:
    """A `--metrics` name: `compute(predictions, references, items, options)` → scores + per_item."""
    name: str
    compute: Callable[[list[str], list, Sequence[dict], dict], dict]
    options: tuple[str, ...] = ()
    per_item: tuple[str, ...] = ()
    scores: tuple[Score, ...] = ()
    study: tuple[Headline, ...] = ()


def _rate(key: str, direction: int = 1, **roles: bool) -> Score:
    """A 0–1 score, shown in points (×100)."""
    return Score(key, direction, 100.0, **roles)


def _rouge_scores() -> tuple[Score, ...]:
    f = tuple(_rate(f"{r}_f", chart=True, headline=True) for r in ("rouge1", "rouge2", "rougeL"))
    return f + tuple(_rate(f"{r}_{a}") for r in ("rouge1", "rouge2", "rougeL") for a in ("p", "r"))


def _squad_golds(items: Sequence[dict]) -> list[list[str]]:
    """Gold answers per item: `references` if given (may be []), else [reference]; an item with
    `is_impossible: true` is unanswerable whatever its reference says."""
    golds = []
    for item in items:
        if item.get("is_impossible"):
            golds.append([])
        elif isinstance(item.get("references"), list):
            golds.append([r for r in item["references"] if isinstance(r, str)])
        else:
            golds.append([item.get("reference") or ""])
    return golds


REGISTRY: dict[str, Metric] = {x.name: x for x in (
    Metric("rouge", lambda preds, refs, items, o: m.rouge(preds, refs),
           per_item=("rougeL_f",), scores=_rouge_scores(),
           study=(Headline("rougeL_f", "ROUGE-L", scale=100.0),)),
    Metric("bertscore", lambda preds, refs, items, o: m.bertscore(preds, refs, **o),
           options=("encoder", "layer"), per_item=("bertscore_f1",),
           scores=(_rate("bertscore_f1", chart=True, headline=True), _rate("bertscore_p"), _rate("bertscore_r"))),
    Metric("citations", lambda preds, refs, items, o: m.citation_scores(
               preds, refs, [it.get("source") for it in items], questions=[it.get("question") for it in items]),
           per_item=("citation_ok", "citations_predicted", "citations_hallucinated"),
           scores=(_rate("citation_accuracy", chart=True, headline=True),
                   _rate("citation_hallucination_rate", -1, headline=True),
                   _rate("citation_cites_any_rate", chart=True), _rate("citation_echo_rate", 0)),
           study=(Headline("citation_ok", "citation accuracy", scale=100.0),)),
    Metric("squad", lambda preds, refs, items, o: m.squad_scores(preds, _squad_golds(items), **o),
           options=("no_answer_string",), per_item=("squad_exact", "squad_f1"),
           scores=(Score("squad_exact", 1, chart=True, headline=True), Score("squad_f1", 1, chart=True, headline=True),
                   *(Score(f"squad_{s}_{k}", 1) for s in ("HasAns", "NoAns") for k in ("exact", "f1"))),
           study=(Headline("squad_f1", "F1"), Headline("squad_exact", "EM"),
                  Headline("squad_f1", "HasAns F1", "has_answer"), Headline("squad_exact", "NoAns EM", "no_answer"))),
    Metric("bleu", lambda preds, refs, items, o: m.bleu(preds, refs, **o),
           options=("tokenize",), scores=(Score("bleu", 1, chart=True, headline=True),)),
    Metric("classification", lambda preds, refs, items, o: m.classification_scores(
               preds, [it.get("label") or it.get("reference") or "" for it in items],
               [it.get("labels") or [] for it in items]),
           per_item=("class_correct", "class_predicted", "class_gold"),
           scores=(_rate("class_accuracy", chart=True, headline=True), _rate("class_macro_f1", chart=True, headline=True),
                   _rate("class_unparsed_rate", -1)),
           study=(Headline("class_correct", "accuracy", scale=100.0),)),
    Metric("answer_form", lambda preds, refs, items, o: m.answer_form_scores(preds, refs),
           per_item=("form_ok", "form_heading", "form_repeats"),
           scores=(_rate("form_rate", chart=True), _rate("form_heading_rate", chart=True), _rate("form_repeat_rate", -1))),
    Metric("length", lambda preds, refs, items, o: m.length_stats(preds, refs),
           scores=(Score("length_pred_words_mean", 0, headline=True), Score("length_pred_words_median", 0))),
)}
METRICS = tuple(REGISTRY)
# The per-item score report.md picks its best and worst examples by: the first one present.
EXAMPLE_KEYS = ("squad_f1", "class_correct", "rougeL_f", "bertscore_f1", "citation_ok")

# Numbers the jobs report beside the metrics (eval: test loss, cut answers; sweep: validation loss).
JOB_SCORES = (Score("test_loss", -1), Score("test_perplexity", -1), _rate("truncated_rate", -1), Score("val_loss", -1))
SCORES: dict[str, Score] = {s.key: s for s in (*(s for x in REGISTRY.values() for s in x.scores), *JOB_SCORES)}

# Which metrics a job picks when none are asked for, by what the records carry (`record_kind`).
EVAL_DEFAULTS = {"squad": ("squad", "bleu", "bertscore", "length"),
                 "legal": ("rouge", "bertscore", "citations", "bleu", "length"),
                 "classification": ("classification", "length"), "text": ("rouge", "bleu", "bertscore", "length")}
STUDY_DEFAULTS = {"squad": ("squad", "length"), "legal": ("rouge", "citations", "length"),
                  "classification": ("classification", "length"), "text": ("rouge", "length")}
# What each `record_kind` is, in words (the commands' --metrics help lists the defaults by it).
RECORD_KINDS = {"squad": "SQuAD v2", "legal": "legal articles", "classification": "labelled classes",
                "text": "other text"}


def record_kind(examples) -> str:
    """"squad" (SQuAD v2 records), "classification" (records carrying their label set), "legal"
    (records citing a code article) or "text"."""
    meta = examples[0].meta.get("meta", examples[0].meta)
    return ("squad" if "is_impossible" in meta else "classification" if "labels" in meta
            else "legal" if "article_num" in meta else "text")


def default_metrics(examples, job: str = "eval") -> list[str]:
    """The metrics `eval` (or `study`) scores when none are given."""
    return list((STUDY_DEFAULTS if job == "study" else EVAL_DEFAULTS)[record_kind(examples)])


def metric_info(name: str) -> tuple[int, float] | None:
    """(direction, points per unit) of a reported number; None for a count or a setting
    (n_items, bertscore_layer, citation_items_scored, reference lengths...), which compare leaves out."""
    s = SCORES.get(name)
    return None if s is None else (s.direction, s.points)


def chart_points(name: str) -> float | None:
    """Points per unit of a number drawn in compare.png; None when it is not drawn there."""
    s = SCORES.get(name)
    return s.points if s is not None and s.chart else None


def headline_keys(metrics: Sequence[str]) -> list[str]:
    """The sweep's metric columns for these metric names, in table order."""
    return [s.key for name in metrics for s in getattr(REGISTRY.get(name), "scores", ()) if s.headline]


def study_headlines(metrics: Sequence[str]) -> list[Headline]:
    return [h for name in metrics for h in getattr(REGISTRY.get(name), "study", ())]


def unknown_metrics(metrics: Sequence[str]) -> list[str]:
    return [x for x in metrics if x not in REGISTRY]


# ---------------------------------------------------------------- scoring

def check_metric_names(metrics: Sequence[str], options: dict | None = None) -> None:
    """Unknown metric or option names are a UserError (checked before any generation runs)."""
    unknown = unknown_metrics(metrics)
    if unknown:
        raise UserError(f"unknown metric(s): {', '.join(unknown)}", where="metrics",
                        fix=f"choose among {', '.join(METRICS)}")
    allowed = {o for x in REGISTRY.values() for o in x.options}
    bad = sorted(set(options or {}) - allowed)
    if bad:
        raise UserError(f"unknown metric option(s): {', '.join(bad)}", where="metrics",
                        fix=f"use only {', '.join(sorted(allowed))}")


def _items_fields(items: Sequence[dict]) -> tuple[list[str], list[Any]]:
    preds, refs = [], []
    for i, item in enumerate(items):
        where = f"item {i}" + (f" (id {item['id']})" if isinstance(item, dict) and "id" in item else "")
        if not isinstance(item, dict) or not isinstance(item.get("prediction"), str):
            raise DataError("missing or non-text 'prediction'", where=where,
                            fix="give every item a 'prediction' string")
        if not isinstance(item.get("reference"), str) and not isinstance(item.get("references"), list):
            raise DataError("missing 'reference' (or 'references' list)", where=where,
                            fix="give every item the expected answer as 'reference'")
        preds.append(item["prediction"])
        listed = [r for r in item.get("references") or [] if isinstance(r, str) and r]
        refs.append(listed or item.get("reference") or "")
    return preds, refs


def score_all(items: Sequence[dict], metrics: Sequence[str], **options: Any) -> dict:
    """Score items `{"prediction", "reference", "references"?, "source"?, "id"?, "is_impossible"?}`.

    Returns one flat dict of metric values (plus `n_items`, `metrics`) and `per_item`: one dict per
    item with its id and per-item scores. Options: each metric's `options` in REGISTRY (encoder,
    layer: bertscore; no_answer_string: squad; tokenize: bleu).
    """
    check_metric_names(metrics, options)
    if not items:
        raise DataError("nothing to score: no items", where="metrics", fix="check the eval dataset")
    preds, refs = _items_fields(items)
    per_item: list[dict] = [{"id": it.get("id", i)} for i, it in enumerate(items)]
    result: dict[str, Any] = {"n_items": len(items), "metrics": list(metrics)}
    for name in dict.fromkeys(metrics):
        metric = REGISTRY[name]
        part = metric.compute(preds, refs, items, {k: v for k, v in options.items() if k in metric.options})
        for row, scores in zip(per_item, part.pop("per_item", [])):
            row.update({k: scores[k] for k in metric.per_item if k in scores})
        result.update(part)
    result["per_item"] = per_item
    return result
