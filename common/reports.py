"""Evaluation artifacts and run comparison, written the same way whatever backend produced them.

An eval directory holds `metrics.json` (numbers + the settings needed to reproduce them),
`predictions.jsonl` (one line per item with its scores, to audit a figure) and `report.md` (for
humans). `compare` reads only `metrics.json`, so any two runs can be put side by side.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from common.errors import DataError, UserError
from common.io import read_json, write_bytes, write_json, write_jsonl, write_text

# Per-item score used to pick best/worst examples, first present wins.
MAIN_ITEM_SCORES = ("squad_f1", "rougeL_f", "bertscore_f1", "citation_ok")
# Metrics drawn in compare.png (0-1 metrics are drawn ×100 to share one axis with SQuAD/BLEU).
CHART_METRICS = ("rouge1_f", "rouge2_f", "rougeL_f", "bertscore_f1", "citation_accuracy",
                 "citation_cites_any_rate", "squad_exact", "squad_f1", "bleu")
HUNDRED_SCALE = {"squad_exact", "squad_f1", "bleu"}
EXAMPLE_CHARS = 400


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _clip(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + " […]"


def _quote(text: Any) -> str:
    return "\n".join("> " + line for line in (_clip(text) or "(empty)").splitlines())


def _main_score(per_item: Sequence[dict], main: str | None) -> str | None:
    if main:
        return main
    return next((k for k in MAIN_ITEM_SCORES if any(row.get(k) is not None for row in per_item)), None)


def _examples(rows: list[dict], key: str) -> str:
    scored = [r for r in rows if isinstance(r["scores"].get(key), (int, float))]
    order = sorted(scored, key=lambda r: float(r["scores"][key]))
    parts = []
    for name, picked in (("Best", order[::-1][:3]), ("Worst", order[:3])):
        parts.append(f"### {name} {min(3, len(picked))} by {key}\n")
        for r in picked:
            parts.append(f"**{_cell(r.get('id'))}** — {key} = {_fmt(r['scores'][key])}\n\n"
                         f"Prompt:\n{_quote(r.get('prompt'))}\n\nReference:\n{_quote(r.get('reference'))}"
                         f"\n\nPrediction:\n{_quote(r.get('prediction'))}\n")
    return "\n".join(parts)


def write_eval_report(out_dir: str | Path, metrics: dict, items: list[dict], settings: dict,
                      title: str, main_score: str | None = None) -> dict[str, Path]:
    """Write metrics.json, predictions.jsonl and report.md into `out_dir`; return their paths.

    `metrics` is `score_all`'s result (its `per_item` list goes to predictions.jsonl, aligned with
    `items` by position); `settings` is whatever makes the run reproducible (model, adapter,
    backend, generation settings...). Best/worst examples use `main_score` or the first per-item
    score present among squad_f1, rougeL_f, bertscore_f1, citation_ok.
    """
    out_dir = Path(out_dir)
    per_item = list(metrics.get("per_item") or [{} for _ in items])
    if len(per_item) != len(items):
        raise ValueError(f"{len(per_item)} per-item scores for {len(items)} items")
    summary = {k: v for k, v in metrics.items() if k != "per_item"}
    rows = []
    for i, (item, scores) in enumerate(zip(items, per_item)):
        rows.append({"id": item.get("id", scores.get("id", i)), "prompt": item.get("prompt"),
                     "reference": item.get("reference"), "prediction": item.get("prediction"),
                     "scores": {k: v for k, v in scores.items() if k != "id"}})
        if "references" in item:
            rows[-1]["references"] = item["references"]
    paths = {"metrics": out_dir / "metrics.json", "predictions": out_dir / "predictions.jsonl",
             "report": out_dir / "report.md"}
    write_json(paths["metrics"], {"title": title, "metrics": summary, "settings": settings})
    write_jsonl(paths["predictions"], rows)
    key = _main_score(per_item, main_score)
    md = [f"# {title}\n", "## Metrics\n",
          _table(["Metric", "Value"], [(k, v) for k, v in summary.items()]) + "\n",
          "## Settings\n",
          _table(["Setting", "Value"], [(k, v) for k, v in settings.items()]) + "\n"]
    if key:
        md += ["## Examples\n", _examples(rows, key)]
    write_text(paths["report"], "\n".join(md).rstrip() + "\n")
    return paths


# ---------------------------------------------------------------- compare

def _load_run(eval_dir: Path) -> tuple[dict, dict]:
    path = Path(eval_dir) / "metrics.json"
    if not path.is_file():
        raise UserError("no metrics.json in this eval directory", where=str(eval_dir),
                        fix="pass directories written by `twinlora eval`")
    data = read_json(path, "metrics.json")
    metrics = data.get("metrics", data) if isinstance(data, dict) else None
    if not isinstance(metrics, dict):
        raise DataError("metrics.json holds no metrics object", where=str(path),
                        fix="re-run `twinlora eval` for this directory")
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    return metrics, settings


def _labels(eval_dirs: Sequence[Path], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(eval_dirs):
            raise UserError(f"{len(labels)} labels for {len(eval_dirs)} eval directories",
                            where="compare", fix="give one label per directory, in the same order")
        return list(labels)
    names = [Path(d).name for d in eval_dirs]
    if len(set(names)) < len(names):
        names = [f"{Path(d).parent.name}/{Path(d).name}" for d in eval_dirs]
    return names


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compare_rows(runs: Sequence[dict]) -> list[tuple[str, list[Any], list[float | None]]]:
    """(metric, values per run, deltas of runs 2.. vs run 1) for every numeric metric, in order of
    first appearance. Deltas are rounded to 12 decimals so 0.7 - 0.5 reads 0.2."""
    names = list(dict.fromkeys(k for run in runs for k, v in run.items() if _is_number(v)))
    table = []
    for name in names:
        values = [run.get(name) for run in runs]
        base = values[0]
        deltas = [round(v - base, 12) if _is_number(v) and _is_number(base) else None
                  for v in values[1:]]
        table.append((name, values, deltas))
    return table


def _chart(rows: list, labels: list[str]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend
    from matplotlib.figure import Figure

    shown = [(n, v) for n, v, _ in rows if n in CHART_METRICS]
    fig = Figure(figsize=(max(6.0, 1.0 + len(shown) * (0.4 + 0.3 * len(labels))), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        heights = [(v[j] or 0) * (1 if n in HUNDRED_SCALE else 100) if _is_number(v[j]) else 0
                   for n, v in shown]
        ax.bar([i + j * width for i in range(len(shown))], heights, width, label=label)
    ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(shown))])
    ax.set_xticklabels([n for n, _ in shown], rotation=30, ha="right")
    ax.set_ylabel("score (0–100; 0–1 metrics ×100)")
    if not shown:
        ax.text(0.5, 0.5, "no main metric in these runs", ha="center", transform=ax.transAxes)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True) if isinstance(value, (dict, list)) \
        else _fmt(value)


def compare(eval_dirs: list[Path], labels: list[str] | None, out_dir: Path) -> str:
    """Put eval runs side by side: write compare.md, compare.csv, compare.png; return the Markdown.

    Rows are numeric metrics, columns the runs, then `Δ label` columns (run minus the first run).
    """
    if not eval_dirs:
        raise UserError("nothing to compare", where="compare", fix="pass at least one eval directory")
    eval_dirs = [Path(d) for d in eval_dirs]
    loaded = [_load_run(d) for d in eval_dirs]
    runs = [metrics for metrics, _ in loaded]
    names = _labels(eval_dirs, labels)
    rows = compare_rows(runs)
    header = ["Metric", *names, *[f"Δ {n}" for n in names[1:]]]
    md = "## Comparison\n\n" + "".join(f"- {n}: `{d}`\n" for n, d in zip(names, eval_dirs))
    md += "\n" + _table(header, [(n, *v, *d) for n, v, d in rows]) + "\n"
    # Text-valued metric fields (tokenizer, encoder...) and run settings: show those that differ.
    texts = [{**{k: v for k, v in m.items() if not _is_number(v) and k != "metrics"},
              **{f"settings.{k}": v for k, v in st.items()}} for m, st in loaded]
    differing = [(k, *[_compact(t.get(k)) for t in texts])
                 for k in dict.fromkeys(k for t in texts for k in t)
                 if len({_compact(t.get(k)) for t in texts}) > 1]
    if differing:
        md += "\n### Settings that differ\n\n" + _table(["Setting", *names], differing) + "\n"
    out_dir = Path(out_dir)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([n, *["" if x is None else x for x in (*v, *d)]] for n, v, d in rows)
    write_text(out_dir / "compare.md", md)
    write_text(out_dir / "compare.csv", buf.getvalue())
    write_bytes(out_dir / "compare.png", _chart(rows, names))
    return md
