"""eval + compare end to end on a tiny model, both backends; every metric filled in the report."""
from __future__ import annotations

import json

import pytest

from helpers import run_cli, tiny_config

from common.trainer import train

SHARED_SQUAD_RECORDS = 4


@pytest.fixture(scope="module")
def legi_data(tmp_path_factory):
    from conftest import ROOT
    out = tmp_path_factory.mktemp("legi")
    r = run_cli("prepare", "legi", ROOT / "data/legi/LEGITEXT000031366350_crpa_sample.json", "--out", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_eval_report_has_every_metric(tiny_model, legi_data, tmp_path, backend):
    train(tiny_config(tiny_model, legi_data / "train.jsonl", tmp_path / "run", training={"steps": 1}, data={"max_length": 512}), backend,
          echo=lambda *a, **k: None)
    out = tmp_path / "eval"
    r = run_cli("eval", "--backend", backend, "--model", tiny_model, "--adapter", tmp_path / "run/adapter",
                "--data", legi_data / "test.jsonl", "--limit", "3", "--max-new-tokens", "8", "--output", out)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    metrics = m["metrics"]
    for key in ("rouge1_f", "rouge2_f", "rougeL_f", "bertscore_f1", "citation_accuracy",
                "citation_cites_any_rate", "bleu", "length_pred_words_mean"):
        assert metrics[key] is not None, key
    # Undefined (None) when no prediction cites anything, which an untrained tiny model does.
    assert "citation_hallucination_rate" in metrics
    assert metrics["bertscore_encoder"].endswith("model") and metrics["bertscore_layer"] == 6
    assert m["settings"]["generation"]["decoding"] == "greedy" and m["settings"]["backend"] == backend
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    assert "| rougeL_f" in (out / "report.md").read_text() or "rougeL_f" in (out / "report.md").read_text()


def test_squad_eval_and_compare(tiny_model, tmp_path):
    from conftest import ROOT
    data = tmp_path / "squad"
    assert run_cli("prepare", "squad", ROOT / "data/squad/dev-v2.0-sample.json", "--out", data,
                   "--option", "test_all=true").exit_code == 0
    dirs = []
    for backend in ("mlx", "torch"):
        out = tmp_path / f"eval-{backend}"
        r = run_cli("eval", "--backend", backend, "--model", tiny_model, "--data", data / "test.jsonl",
                    "--template", "raw", "--limit", str(SHARED_SQUAD_RECORDS), "--max-new-tokens", "4",
                    "--metrics", "squad,bleu,length", "--output", out)
        assert r.exit_code == 0, r.output
        dirs.append(out)
    m = [json.loads((d / "metrics.json").read_text())["metrics"] for d in dirs]
    for key in ("squad_exact", "squad_f1", "squad_HasAns_total", "squad_NoAns_total"):
        assert key in m[0]
    # Same base, greedy decoding: both backends generate the same text, so the same scores.
    preds = [[json.loads(l)["prediction"] for l in (d / "predictions.jsonl").read_text().splitlines()] for d in dirs]
    assert preds[0] == preds[1]
    r = run_cli("compare", *dirs, "--labels", "mlx,torch", "--output", tmp_path / "cmp")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    assert "squad_f1" in (tmp_path / "cmp" / "compare.md").read_text()
