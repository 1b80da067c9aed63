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
from common.runs.io import read_json, write_bytes, write_json, write_jsonl, write_text
from common.evaluation.registry import EXAMPLE_KEYS, chart_points, metric_info

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
    return next((k for k in EXAMPLE_KEYS if any(row.get(k) is not None for row in per_item)), None)


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
        # what the study's cost and failure tables read: the references, the user's question, the
        # prompt's and the answer's lengths in tokens and the seconds the answer took
        rows[-1].update({k: item[k] for k in ("references", "question", "prompt_tokens", "answer_tokens", "seconds")
                         if k in item})
    paths = {"metrics": out_dir / "metrics.json", "predictions": out_dir / "predictions.jsonl",
             "report": out_dir / "report.md"}
    write_json(paths["metrics"], {"title": title, "metrics": summary, "settings": settings})
    write_jsonl(paths["predictions"], rows)
    key = _main_score(per_item, main_score)
    md = [f"# {title}\n", "## Metrics\n",
          _table(["Metric", "Value"], [(k, v) for k, v in summary.items()]) + "\n",
          "## Settings\n",
          _table(["Setting", "Value"], [(k, v) for k, v in settings.items()]) + "\n"]
    cut = [_cell(r["id"]) for r, it in zip(rows, items) if it.get("truncated")]
    if cut:
        md += ["## Answers cut by the token limit\n",
               f"{len(cut)} of {len(rows)} answers reached max_new_tokens without ending (their scores "
               f"judge a partial answer): {', '.join(cut[:50])}{' …' if len(cut) > 50 else ''}\n"]
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
    """(metric, values per run, deltas of runs 2.. vs run 1) for every metric with a meaning
    (`common.evaluation.registry.metric_info`: counts and settings such as n_items or bertscore_layer are left
    out), in order of first appearance. Deltas are rounded to 12 decimals so 0.7 - 0.5 reads 0.2."""
    names = list(dict.fromkeys(k for run in runs for k, v in run.items() if _is_number(v) and metric_info(k)))
    table = []
    for name in names:
        values = [run.get(name) for run in runs]
        base = values[0]
        deltas = [round(v - base, 12) if _is_number(v) and _is_number(base) else None
                  for v in values[1:]]
        table.append((name, values, deltas))
    return table


def signed_points(name: str, delta: float | None) -> float | None:
    """A delta in points (0–1 rates ×100), signed so that positive means better; None for a
    descriptive metric (lengths) or a missing value."""
    direction, points = metric_info(name) or (0, 1)
    return None if delta is None or not direction else round(direction * delta * points, 9)


def _verdict(name: str, delta: float | None) -> str:
    p = signed_points(name, delta)
    return "" if p is None else "better" if p > 0 else "worse" if p < 0 else "same"


def _arrow(name: str) -> str:
    return {1: "↑", -1: "↓"}.get((metric_info(name) or (0,))[0], "")


def _delta_cell(name: str, delta: float | None) -> str:
    if delta is None:
        return "—"
    verdict = _verdict(name, delta)
    return f"{delta:+.4f}" + (f" {verdict}" if verdict and verdict != "same" else "")


FEW_ITEMS = 30  # below this, one item moves a rate by more than 3 points


def _n_warning(runs: Sequence[dict]) -> str:
    ns = [run.get("n_items") for run in runs if _is_number(run.get("n_items"))]
    if not ns:
        return ""
    notes = []
    if len(set(ns)) > 1:
        notes.append(f"the runs scored different numbers of items ({', '.join(map(str, ns))}): "
                     "their metrics are not directly comparable")
    n = min(ns)
    if n < FEW_ITEMS:
        notes.append(f"only n = {n} items: one item moves a 0–1 rate by {100 / n:.1f} points, so "
                     f"differences of a few points are noise (evaluate more items, e.g. --limit {max(100, n)})")
    return "".join(f"> **Warning:** {note}.\n" for note in notes)


def _chart(rows: list, labels: list[str]) -> bytes:
    """Left: the scores (0–100 scale, from zero). Right: each run's change against the first run,
    in points, signed so that right is better whatever the metric's direction; a 1-point change
    is as visible as a 20-point one."""
    from common.evaluation import plots
    shown = [(n, v, d) for n, v, d in rows if chart_points(n)]
    deltas = [(n, [signed_points(n, x) for x in d]) for n, _, d in rows if _verdict(n, 0.0)]
    two = len(labels) > 1 and bool(deltas)
    fig, axes = plots.figure(max(6.0, 1.0 + len(shown) * (0.4 + 0.3 * len(labels))) + (6.0 if two else 0.0),
                             max(4.5, 0.35 * len(deltas) * max(1, len(labels) - 1) + 1.5) if two else 4.5,
                             2 if two else 1)
    ax = axes[0]
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        heights = [(v[j] or 0) * chart_points(n) if _is_number(v[j]) else 0
                   for n, v, _ in shown]
        ax.bar([i + j * width for i in range(len(shown))], heights, width, label=label)
    ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(shown))])
    ax.set_xticklabels([n for n, _, _ in shown], rotation=30, ha="right")
    plots.style(ax, title="scores", ylabel="score (0–100; 0–1 metrics ×100)", zero=True)
    if not shown:
        ax.text(0.5, 0.5, "no main metric in these runs", ha="center", transform=ax.transAxes)
    if two:
        dx = axes[1]
        others = labels[1:]
        h = 0.8 / len(others)
        for j, label in enumerate(others):
            ys = [i + j * h for i in range(len(deltas))]
            xs = [d[j] or 0.0 for _, d in deltas]
            colors = ["tab:green" if x > 0 else "tab:red" if x < 0 else "tab:gray" for x in xs]
            dx.barh(ys, xs, h, color=colors, edgecolor="black", linewidth=0.3, label=label)
            for y, x in zip(ys, xs):
                dx.annotate(f"{x:+.1f}" + (f" {label}" if len(others) > 1 else ""), (x, y), xytext=(3 if x >= 0 else -3, 0), textcoords="offset points",
                            ha="left" if x >= 0 else "right", va="center", fontsize=7)
        dx.set_yticks([i + h * (len(others) - 1) / 2 for i in range(len(deltas))])
        dx.set_yticklabels([f"{n} {_arrow(n)}" for n, _ in deltas], fontsize=8)
        dx.invert_yaxis()
        dx.axvline(0, color="black", linewidth=0.8)
        lim = max([abs(x or 0) for _, d in deltas for x in d] + [1.0]) * 1.3
        dx.set_xlim(-lim, lim)
        plots.style(dx, title=f"Δ vs {labels[0]}" + (f" ({', '.join(others)})" if len(others) > 1 else f": {others[0]}"),
                    xlabel=f"change vs {labels[0]} (points for scores and rates, raw for loss; right = better)",
                    legend=False)
    return plots.png(fig)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True) if isinstance(value, (dict, list)) \
        else _fmt(value)


def compare(eval_dirs: list[Path], labels: list[str] | None, out_dir: Path) -> str:
    """Put eval runs side by side: write compare.md, compare.csv, compare.png; return the Markdown.

    Rows are the metrics that have a direction or describe the answers (counts and settings are
    left out), with ↑/↓ for better, columns the runs, then `Δ label` columns (run minus the first
    run, marked better/worse). Few items or different item counts get a warning above the table.
    """
    if not eval_dirs:
        raise UserError("nothing to compare", where="compare", fix="pass at least one eval directory")
    eval_dirs = [Path(d) for d in eval_dirs]
    loaded = [_load_run(d) for d in eval_dirs]
    runs = [metrics for metrics, _ in loaded]
    names = _labels(eval_dirs, labels)
    rows = compare_rows(runs)
    header = ["Metric", "better", *names, *[f"Δ {n}" for n in names[1:]]]
    md = "## Comparison\n\n" + "".join(f"- {n}: `{d}`\n" for n, d in zip(names, eval_dirs))
    ns = [run.get("n_items") for run in runs]
    if any(_is_number(n) for n in ns):
        md += f"- items scored: {', '.join(_fmt(n) for n in ns)}\n"
    warning = _n_warning(runs)
    md += ("\n" + warning if warning else "")
    md += "\n" + _table(header, [(n, _arrow(n), *v, *[_delta_cell(n, x) for x in d]) for n, v, d in rows]) + "\n"
    md += ("\n↑ higher is better, ↓ lower is better; deltas are against the first column "
           "(0–1 rates: ×100 for points).\n")
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
    writer.writerow(["Metric", "better", *names, *[f"Δ {n}" for n in names[1:]]])
    writer.writerows([n, {"↑": "higher", "↓": "lower"}.get(_arrow(n), ""),
                      *["" if x is None else x for x in (*v, *d)]] for n, v, d in rows)
    write_text(out_dir / "compare.md", md)
    write_text(out_dir / "compare.csv", buf.getvalue())
    write_bytes(out_dir / "compare.png", _chart(rows, names))
    return md
