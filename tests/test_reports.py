"""Eval report files and the run comparison."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from common.errors import UserError
from common.evaluation.registry import score_all
from common.evaluation.reports import compare, compare_rows, write_eval_report

ITEMS = [
    {"id": f"q{i}", "prompt": f"Question {i}?", "reference": ref, "prediction": pred}
    for i, (ref, pred) in enumerate([
        ("le chat dort", "le chat dort"), ("le chat mange", "le chat dort"),
        ("un chien aboie", "rien à voir"), ("article L. 100-1", "Voir l'article L100-1 | ok"),
        ("deux mots", "deux"),
    ])
]
SETTINGS = {"model": "tiny", "adapter": "runs/a", "backend": "torch", "max_tokens": 64}


def test_write_eval_report(tmp_path):
    metrics = score_all(ITEMS, ["rouge", "citations", "length"])
    paths = write_eval_report(tmp_path / "eval", metrics, ITEMS, SETTINGS, title="Demo eval")
    data = json.loads(paths["metrics"].read_text(encoding="utf-8"))
    assert list(data) == ["title", "metrics", "settings"]
    assert data["settings"] == SETTINGS
    assert "per_item" not in data["metrics"] and data["metrics"]["n_items"] == 5
    assert data["metrics"]["rougeL_f"] == pytest.approx(metrics["rougeL_f"])

    lines = paths["predictions"].read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5
    row = json.loads(lines[1])
    assert set(row) == {"id", "prompt", "reference", "prediction", "scores"}
    assert row["id"] == "q1" and row["scores"]["rougeL_f"] == pytest.approx(2 / 3)

    md = paths["report"].read_text(encoding="utf-8")
    assert md.startswith("# Demo eval\n")
    assert "| Metric | Value |" in md and "| Setting | Value |" in md
    assert "| rougeL_f | " in md and "| backend | torch |" in md
    assert "### Best 3 by rougeL_f" in md and "### Worst 3 by rougeL_f" in md
    worst = md.split("### Worst")[1]
    assert "**q2**" in worst  # "rien à voir" shares nothing with its reference
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes left no temporary file


def _fake_eval(path: Path, metrics: dict, settings: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"title": "t", "metrics": metrics,
                                                   "settings": settings or {}}))
    return path


def test_compare_deltas_and_files(tmp_path):
    a = _fake_eval(tmp_path / "base", {"rougeL_f": 0.5, "bleu": 20.0, "squad_f1": 70.0, "bertscore_layer": 6,
                                       "citation_hallucination_rate": 0.20, "length_pred_words_mean": 30.0,
                                       "rouge_tokenizer": "x", "n_items": 10}, {"backend": "mlx"})
    b = _fake_eval(tmp_path / "lora", {"rougeL_f": 0.7, "bleu": 25.5, "squad_f1": 68.25, "bertscore_layer": 6,
                                       "citation_hallucination_rate": 0.21, "length_pred_words_mean": 25.0,
                                       "rouge_tokenizer": "y", "n_items": 10}, {"backend": "torch"})
    rows = {name: (values, deltas) for name, values, deltas in
            compare_rows([json.loads((d / "metrics.json").read_text())["metrics"] for d in (a, b)])}
    assert rows["rougeL_f"] == ([0.5, 0.7], [0.2])
    assert rows["bleu"][1] == [5.5] and rows["squad_f1"][1] == [-1.75]
    assert "n_items" not in rows and "bertscore_layer" not in rows  # counts and settings are not metrics

    out = tmp_path / "cmp"
    md = compare([a, b], None, out)
    assert "| Metric | better | base | lora | Δ lora |" in md
    assert "| rougeL_f | ↑ | 0.5000 | 0.7000 | +0.2000 better |" in md
    assert "| squad_f1 | ↑ | 70.00 | 68.25 | -1.7500 worse |" in md
    assert "| citation_hallucination_rate | ↓ | 0.2000 | 0.2100 | +0.0100 worse |" in md
    assert "| length_pred_words_mean |  | 30.00 | 25.00 | -5.0000 |" in md  # descriptive: no verdict
    assert "| n_items |" not in md and "- items scored: 10, 10" in md
    assert "> **Warning:** only n = 10 items: one item moves a 0–1 rate by 10.0 points" in md
    assert "| rouge_tokenizer | x | y |" in md  # text fields and settings that differ are shown
    assert "| settings.backend | mlx | torch |" in md
    assert (out / "compare.md").read_text(encoding="utf-8") == md
    with open(out / "compare.csv", newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["Metric", "better", "base", "lora", "Δ lora"]
    assert ["rougeL_f", "higher", "0.5", "0.7", "0.2"] in table
    png = (out / "compare.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000

    md = compare([a, b], ["before", "after"], out)
    assert "| Metric | better | before | after | Δ after |" in md


def test_signed_points_make_right_better():
    """compare.png's delta panel: points, positive = better, whatever the metric's direction."""
    from common.evaluation.reports import signed_points
    assert signed_points("rougeL_f", 0.012) == pytest.approx(1.2)
    assert signed_points("citation_hallucination_rate", 0.01) == pytest.approx(-1.0)
    assert signed_points("test_perplexity", -2.5) == pytest.approx(2.5)
    assert signed_points("bleu", 0.4) == pytest.approx(0.4)
    assert signed_points("length_pred_words_mean", 3.0) is None


def test_compare_warns_when_item_counts_differ(tmp_path):
    a = _fake_eval(tmp_path / "a", {"bleu": 1.0, "n_items": 200})
    b = _fake_eval(tmp_path / "b", {"bleu": 2.0, "n_items": 150})
    md = compare([a, b], None, tmp_path / "cmp")
    assert "different numbers of items (200, 150)" in md and "only n =" not in md


def test_compare_errors(tmp_path):
    a = _fake_eval(tmp_path / "base", {"bleu": 1.0})
    missing = tmp_path / "nothing-here"
    with pytest.raises(UserError) as err:
        compare([a, missing], None, tmp_path / "cmp")
    assert str(missing) in str(err.value)
    with pytest.raises(UserError, match="labels"):
        compare([a], ["x", "y"], tmp_path / "cmp")
