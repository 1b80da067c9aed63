"""eval + compare end to end on a tiny model, both backends; every metric filled in the report."""
from __future__ import annotations

import json

import pytest

from helpers import run_cli, tiny_config

from jobs.trainer import train

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
    for key in ("rouge1_f", "rouge2_f", "rougeL_f", "bertscore_f1", "citation_cites_any_rate", "bleu",
                "length_pred_words_mean", "test_loss", "test_perplexity", "truncated_rate"):
        assert metrics[key] is not None, key
    # legi questions name their article: an answer repeating it is not scored as a correct citation
    assert metrics["citation_items_scored"] + metrics["citation_items_question_only"] \
        + metrics["citation_items_without_reference"] == 3
    assert "citation_accuracy" in metrics
    # Undefined (None) when no prediction cites anything, which an untrained tiny model does.
    assert "citation_hallucination_rate" in metrics
    assert metrics["bertscore_encoder"].endswith("model") and metrics["bertscore_layer"] == 6
    assert m["settings"]["generation"]["decoding"] == "greedy" and m["settings"]["backend"] == backend
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    assert "| rougeL_f" in (out / "report.md").read_text() or "rougeL_f" in (out / "report.md").read_text()


def _longer_context(model, out, positions: int = 4096):
    """A copy of the tiny model whose config allows `positions` (RoPE: no position table, the same
    weights): SQuAD prompts with their context run past its 512 positions, which eval refuses (E171)."""
    import shutil
    shutil.copytree(model, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["max_position_embeddings"] = positions
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def test_squad_eval_and_compare(tiny_model, tmp_path):
    from conftest import ROOT
    tiny_model = _longer_context(tiny_model, tmp_path / "model")
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


def test_limit_draws_a_seeded_sample_not_the_first_records():
    from jobs.evaluation import sample
    rows = list(range(40))
    picked, idx = sample(rows, 6, seed=0)
    assert picked == idx and idx == sorted(idx) and len(set(idx)) == 6
    assert sample(rows, 6, seed=0)[1] == idx            # same seed, same records
    assert sample(rows, 6, seed=1)[1] != idx            # another seed, another sample
    assert idx != list(range(6))
    assert sample(rows, None, seed=0)[1] == rows and sample(rows, 99, seed=0)[1] == rows


def test_citation_echoed_from_the_question_does_not_count():
    from common.evaluation.metrics import citation_scores
    q = ["Que dit l'article L100-1 ?", "Que dit l'article L100-2 ?", "Quel article s'applique ?"]
    refs = ["L'article L100-1 prévoit X.", "L'article L100-2 renvoie à l'article L200-3.", "L'article L300-1."]
    preds = ["L'article L100-1 prévoit Y.",          # echo only: not scored (reference cites only the question's)
             "L'article L100-2 s'applique.",         # echo, misses L200-3: wrong
             "Voir l'article L300-1."]               # right, not in the question
    s = citation_scores(preds, refs, questions=q)
    assert [r["citation_ok"] for r in s["per_item"]] == [None, False, True]
    assert s["citation_accuracy"] == 0.5 and s["citation_items_question_only"] == 1
    assert s["citation_items_without_reference"] == 0 and s["citation_echo_rate"] == 1.0  # 2 of 2 asked
    assert s["citation_hallucination_rate"] == 0.0  # the question's article is not a hallucination
    # without the questions the echo counted as correct (the old behaviour)
    assert citation_scores(preds, refs)["citation_accuracy"] == 1.0


def test_eval_uses_the_adapters_prompting_flags_cut_answers_and_reports_perplexity(tiny_model, tmp_path):
    import math
    import numpy as np
    from helpers import chat_rows, write_jsonl
    from jobs.session import open_model
    from common.training.tokenize import Tokenizer
    from common.data.formats import load_examples

    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(12))
    train(tiny_config(tiny_model, data, tmp_path / "run", training={"steps": 2},
                      data={"system_prompt": "Réponds en droit."}), "torch", echo=lambda *a, **k: None)
    adapter = tmp_path / "run" / "adapter"
    out = tmp_path / "eval"
    r = run_cli("eval", "--backend", "torch", "--model", tiny_model, "--adapter", adapter, "--data", data,
                "--limit", "1", "--seed", "3", "--max-new-tokens", "3", "--metrics", "rouge", "--output", out)
    assert r.exit_code == 0, r.output
    assert "as recorded with the adapter" in r.output and "reached --max-new-tokens=3" in r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["settings"]["system_prompt"] == "Réponds en droit." and m["settings"]["prompting_from"] == "adapter"
    assert m["settings"]["sample"] == {"limit": 1, "seed": 3, "of": 12, "how": "seeded random sample, file order"}
    pred = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert "Réponds en droit." in pred["prompt"]
    assert pred["scores"]["truncated"] is True and m["metrics"]["n_truncated"] == 1
    # test loss = token-weighted cross-entropy of the reference, computed here from the logits
    from jobs.evaluation import sample
    ex = sample(load_examples(data), 1, 3)[0][0]
    opened = open_model("torch", str(tiny_model), adapter=adapter)
    t = Tokenizer(opened.tokenizer, "chat", "Réponds en droit.", True, 128).encode(ex)
    logits = opened.backend.logits(np.array([t.ids]))[0].astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    targets = [i for i in range(1, len(t.ids)) if t.mask[i]]
    expected = -np.mean([logp[i - 1, t.ids[i]] for i in targets])
    assert m["metrics"]["test_loss"] == pytest.approx(expected, rel=1e-5)
    assert m["metrics"]["test_perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert m["metrics"]["test_loss_tokens"] == len(targets)
