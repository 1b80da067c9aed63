"""SQuAD v2 JSON → prompt/completion records for extractive QA with abstention.

Unanswerable questions get the fixed completion `NO_ANSWER`, so the model learns to abstain with
one string the evaluation can recognise (it imports the constant). Records are grouped by
paragraph context: questions on one context never appear in two splits, otherwise a test question
could be answered by memorising the context seen in training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from common.data.splits import DEFAULT_RATIOS, finish, pair_key
from common.errors import DataError
from common.runs.io import read_json

NAME = "squad"
HELP = ("SQuAD v2.0 JSON (data → paragraphs → qas) → prompt/completion records "
        "'Question: …\\nContext: …\\nAnswer:' → ' <first gold answer>' or ' unanswerable' for "
        "is_impossible questions; meta keeps the id and all gold answers for evaluation. Split by "
        "paragraph context; test_all=true puts everything in test (to evaluate the official dev set).")
OPTIONS = {"test_all": "put every record in test.jsonl (for the official dev set; default false)"}
NO_ANSWER = "unanswerable"
PROMPT = "Question: {question}\nContext: {context}\nAnswer:"


def format_prompt(question: str, context: str) -> str:
    """The exact prompt string; evaluation builds prompts with this same function."""
    return PROMPT.format(question=question.strip(), context=context.strip())


def _need(obj: Any, key: str, kind: type, path: Path, inside: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f'missing "{key}"', where=f"{path}:{inside}",
                        fix="give the official SQuAD v2 layout: data → paragraphs → qas")
    value = obj[key]
    if not isinstance(value, kind):
        raise DataError(f'"{key}" must be a {kind.__name__}, found a {type(value).__name__}',
                        where=f"{path}:{inside}", fix="give the official SQuAD v2 layout")
    return value


def read_squad(path: str | Path) -> list[dict]:
    """Every question of one SQuAD file as a prompt/completion record (meta.context_id groups them)."""
    path = Path(path)
    root = read_json(path, "SQuAD JSON file")
    if not isinstance(root, dict) or not isinstance(root.get("data"), list):
        raise DataError('not SQuAD JSON: expected an object with a "data" list at the root', where=str(path),
                        fix="give the official SQuAD v2 file (e.g. dev-v2.0.json)")
    records = []
    for a, article in enumerate(root["data"]):
        inside = f"data[{a}]"
        title = _need(article, "title", str, path, inside)
        for p, para in enumerate(_need(article, "paragraphs", list, path, inside)):
            inside = f"data[{a}].paragraphs[{p}]"
            context = _need(para, "context", str, path, inside)
            for q, qa in enumerate(_need(para, "qas", list, path, inside)):
                inside = f"data[{a}].paragraphs[{p}].qas[{q}]"
                question = _need(qa, "question", str, path, inside)
                qid = _need(qa, "id", str, path, inside)
                impossible = bool(qa.get("is_impossible", False))
                answers = _need(qa, "answers", list, path, inside)
                texts = [_need(ans, "text", str, path, f"{inside}.answers[{i}]") for i, ans in enumerate(answers)]
                if not impossible and not texts:
                    raise DataError('answerable question (is_impossible false) has no "answers"',
                                    where=f"{path}:{inside}", fix="add the gold answers or set is_impossible")
                records.append({
                    "prompt": format_prompt(question, context),
                    "completion": " " + (NO_ANSWER if impossible else texts[0]),
                    "meta": {"id": qid, "title": title, "is_impossible": impossible,
                             "answers": [] if impossible else texts, "context_id": f"{title}#{p}"},
                })
    if not records:
        raise DataError("SQuAD file holds no questions", where=str(path), fix="check the file")
    return records


def run(inputs: list[str], out_dir: Path, *, seed: int = 0, options: dict | None = None) -> dict:
    """Prepare SQuAD v2 records, split by context (or all in test with test_all)."""
    options = options or {}
    test_all = options.get("test_all", False)
    test_all = test_all.strip().lower() in ("1", "true", "yes", "on") if isinstance(test_all, str) else bool(test_all)
    records, paths = [], []
    for name in inputs:
        paths.append(Path(name))
        records += read_squad(name)
    impossible = sum(r["meta"]["is_impossible"] for r in records)
    extra = {
        "test_all": test_all,
        "questions": {"total": len(records), "answerable": len(records) - impossible,
                      "unanswerable": impossible},
        "no_answer": NO_ANSWER,
    }
    ratios = (0.0, 0.0, 1.0) if test_all else options.get("ratios", DEFAULT_RATIOS)
    return finish(records, recipe=NAME, out_dir=out_dir, seed=seed, sources=paths,
                  group_key=lambda r: r["meta"]["context_id"], ratios=ratios, extra=extra,
                  # evaluating needs every official id: then only a repeated id is a duplicate
                  key=(lambda r: r["meta"]["id"]) if test_all else pair_key)
