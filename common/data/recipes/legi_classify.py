"""French codes (legi-data JSON) → a classification task: which top-level part of its code does
an article passage come from?

The documents this product serves open with "a small dataset of 200–500 examples in JSONL chat
format for a classification task"; this recipe makes one from any legi code, with no model
involved. Labels are the code's top-level divisions (the first breadcrumb entry of its articles,
e.g. "Livre II : LES ACTES UNILATÉRAUX PRIS PAR L'ADMINISTRATION"); each record shows one passage
(every sentence of at least 40 characters, every paragraph, and the whole article, each at most
600 characters, duplicates dropped), lists the labels, and answers with one of them. Records carry
`meta.labels` and `meta.label`, so `eval` and `study` score them with accuracy and macro-F1
(`classification` metric). Articles never span two splits. Reads the inputs as the `legi` recipe
does (files or code ids, articles in force).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from common.data.recipes import legi
from common.data.splits import DEFAULT_RATIOS, dedup, finish
from common.errors import DataError

NAME = "legi-classify"
HELP = ("A classification task from French codes (legi-data JSON, as the legi recipe reads them): "
        "\"which top-level part of the code does this passage belong to?\", labels = the code's "
        "top-level divisions (Livres, Parties...). Each sentence, paragraph and whole article in "
        "force becomes one chat record answered by its division title; scored by accuracy and "
        "macro-F1. Articles never span two splits.")
OPTIONS = {k: v for k, v in legi.OPTIONS.items() if k in ("legi_dir", "include_abrogated", "min_chars")}
SYSTEM_PROMPT = ("Vous classez des extraits de codes juridiques français. Répondez uniquement par le titre "
                 "exact de la partie du code, choisi dans la liste donnée.")
PASSAGE_MIN, PASSAGE_MAX = 40, 600


def passages(article: legi.Article) -> list[tuple[str, str]]:
    """(kind, text) of one article: its sentences, its paragraphs, the whole article; each once."""
    found = [("sentence", s) for s in legi.sentences(article.text) if len(s) >= PASSAGE_MIN]
    found += [("paragraph", p) for p in article.text.split("\n") if len(p) >= PASSAGE_MIN]
    found.append(("article", article.text.replace("\n", " ")))
    out, seen = [], set()
    for kind, text in found:
        text = legi._cut(text, PASSAGE_MAX)
        if text not in seen:
            seen.add(text)
            out.append((kind, text))
    return out


def question(code_title: str, passage: str, labels: list[str]) -> str:
    options = "\n".join(f"- {lab}" for lab in labels)
    return (f"Extrait d'un article {legi._du(code_title)} :\n« {passage} »\n\n"
            f"Dans quelle partie du code cet article se trouve-t-il ? Répondez par l'une de ces parties :\n{options}")


def code_records(code: legi.Code, articles: list[legi.Article]) -> list[dict]:
    """One record per passage of every article placed in a division; the labels are the code's
    top-level divisions in the order they first appear."""
    placed = [a for a in articles if a.breadcrumb]
    labels = list(dict.fromkeys(a.breadcrumb[0] for a in placed))
    if len(labels) < 2:
        raise DataError(f"this code has {len(labels)} top-level division(s) among its kept articles; a "
                        "classification needs at least two", where=str(code.path),
                        fix="give a code with several top-level parts (Livres, Parties, Titres)")
    records = []
    for art in placed:
        for kind, text in passages(art):
            records.append({
                "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                             {"role": "user", "content": question(code.title, text, labels)},
                             {"role": "assistant", "content": art.breadcrumb[0]}],
                "meta": {"code_id": art.code_id, "article_id": art.id, "article_num": art.num,
                         "passage": kind, "label": art.breadcrumb[0], "labels": labels}})
    return records


def run(inputs: list[str], out_dir: Path, *, seed: int = 0, options: dict | None = None) -> dict:
    """Read the codes as `legi` does, render the passages, split by article."""
    options = options or {}
    include_abrogated = legi._bool(options.get("include_abrogated", False))
    min_chars = legi.int_option(options, "min_chars", 50)
    records: list[dict] = []
    paths = legi.resolve_inputs(inputs, legi.legi_dir(options))
    for path in paths:
        code = legi.read_code(path)
        kept, _ = legi.select_articles(code, include_abrogated=include_abrogated, min_chars=min_chars)
        records += code_records(code, kept)
    unique = dedup(records)
    extra = {"labels": dict(Counter(r["meta"]["label"] for r in unique)),
             "passages": dict(Counter(r["meta"]["passage"] for r in unique)),
             "duplicates_dropped": len(records) - len(unique)}
    return finish(unique, recipe=NAME, out_dir=out_dir, seed=seed, sources=paths,
                  group_key=lambda r: r["meta"]["article_id"],
                  ratios=options.get("ratios", DEFAULT_RATIOS), extra=extra)
