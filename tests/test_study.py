"""`study` on the tiny model: baseline and tuned adapters on both backends scored on the test
split with bootstrap intervals and learning curves; a rerun does nothing; an interrupted study
finishes only what is missing and ends with the same report; other settings are refused."""
from __future__ import annotations

import json
import shutil

import pytest

from helpers import run_cli, write_jsonl

import jobs.evaluation
import jobs.trainer
from common.config.schema import dump_yaml, load_config
from common.errors import ConfigError
from jobs.study import run_study

OPTS = dict(curve_every=2, curve_items=3, test_items=None, max_new_tokens=4, n_boot=200, seed=0, forgetting=False,
            variability_items=0)  # tests/test_decision.py runs those


def _squad_rows(n: int, start: int = 0) -> list[dict]:
    """SQuAD-v2-shaped records: every other question unanswerable."""
    rows = []
    for i in range(start, start + n):
        impossible = i % 2 == 1
        rows.append({"prompt": f"Question: what is item {i}?\nContext: item {i} is blue.\nAnswer:",
                     "completion": " unanswerable" if impossible else " blue",
                     "meta": {"id": f"q{i}", "is_impossible": impossible, "answers": [] if impossible else ["blue"]}})
    return rows


@pytest.fixture(scope="module")
def config(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    for name, (n, start) in {"train": (8, 0), "valid": (4, 100), "test": (6, 200)}.items():
        write_jsonl(root / f"{name}.jsonl", _squad_rows(n, start))
    cfg = load_config(overrides={
        "model": {"path": str(tiny_model)},
        "data": {"train": str(root / "train.jsonl"), "valid": str(root / "valid.jsonl"),
                 "test": str(root / "test.jsonl"), "template": "raw", "max_length": 64},
        "training": {"steps": 4, "batch_size": 2, "lr": 1e-2, "log_every": 1},
        "lora": {"target_modules": "all-linear"}, "output": str(root / "unused")})
    path = root / "study.yaml"
    path.write_text(dump_yaml(cfg), encoding="utf-8")
    return root, path


@pytest.fixture(scope="module")
def full(config):
    root, path = config
    out = root / "full"
    report = run_study(path, [], ["mlx", "torch"], out, echo=lambda *a, **k: None, **OPTS)
    return out, report


def _json(out):
    return json.loads((out / "study.json").read_text(encoding="utf-8"))


def test_report_files_intervals_and_curves(full):
    out, report = full
    saved = _json(out)
    assert [r["metric"] for r in saved["results"]] == ["F1", "EM", "HasAns F1", "NoAns EM"]
    assert [r["n_items"] for r in saved["results"]] == [6, 6, 3, 3]
    for r in saved["results"]:
        assert list(r["systems"]) == ["baseline", "torch-tuned", "mlx-tuned"]  # torch before mlx
        for s in r["systems"].values():
            assert 0 <= s["lo"] <= s["mean"] <= s["hi"] <= 100
        assert [(p["a"], p["b"]) for p in r["pairs"]] == [("baseline", "torch-tuned"), ("baseline", "mlx-tuned"),
                                                         ("torch-tuned", "mlx-tuned")]
    # the table's numbers are the eval reports' numbers: F1 mean == squad_f1 of metrics.json
    for name, d in (("baseline", "baseline"), ("torch-tuned", "torch"), ("mlx-tuned", "mlx")):
        m = json.loads((out / d / "test" / "metrics.json").read_text())["metrics"]
        assert saved["results"][0]["systems"][name]["mean"] == pytest.approx(m["squad_f1"])
        assert saved["results"][3]["systems"][name]["mean"] == pytest.approx(m["squad_NoAns_exact"])
    for b in ("torch", "mlx"):
        assert [s for s, _ in saved["curves"][b]["val_loss"]] == [0, 2, 4]  # step 0: before training
        assert [s for s, _, n in saved["curves"][b]["metric"]] == [0, 2, 4]
        assert all(n == 3 for *_, n in saved["curves"][b]["metric"])
        assert (out / b / "checkpoint-adapters" / "step-000002" / "twinlora.json").is_file()
    md = (out / "study.md").read_text(encoding="utf-8")
    assert "| F1 (n=6) | EM (n=6) | HasAns F1 (n=3) | NoAns EM (n=3) |" in md and "## Learning curves" in md
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_adapter_holds_the_checkpoint_weights(full):
    from safetensors.numpy import load_file
    out, _ = full
    ckpt = load_file(str(out / "mlx" / "run" / "checkpoints" / "step-000002" / "adapter_model.safetensors"))
    adapter = load_file(str(out / "mlx" / "checkpoint-adapters" / "step-000002" / "adapter_model.safetensors"))
    final = load_file(str(out / "mlx" / "run" / "adapter" / "adapter_model.safetensors"))
    assert ckpt.keys() == adapter.keys() and all((ckpt[k] == adapter[k]).all() for k in ckpt)
    assert any((ckpt[k] != final[k]).any() for k in ckpt)


def test_rerun_does_nothing(full, config, monkeypatch):
    out, _ = full
    before = (out / "study.json").read_text(encoding="utf-8")

    def boom(*a, **k):
        raise AssertionError("nothing should run again")
    monkeypatch.setattr(jobs.trainer, "train", boom)
    monkeypatch.setattr(jobs.evaluation, "run_eval", boom)
    run_study(config[1], [], ["mlx", "torch"], out, echo=lambda *a, **k: None, **OPTS)
    after = json.loads((out / "study.json").read_text(encoding="utf-8"))
    before = json.loads(before)
    # only the bookkeeping of time moves: each stage ran once more, doing nothing
    assert {k: v for k, v in after.items() if k != "stage_times"} == {k: v for k, v in before.items() if k != "stage_times"}
    assert [t["runs"] for t in after["stage_times"].values()] == [t["runs"] + 1 for t in before["stage_times"].values()]


def test_interrupted_study_finishes_what_is_missing(full, config, monkeypatch):
    """As if killed during MLX training after the step-2 checkpoint: the MLX adapter, its last curve
    point and its test eval are missing. The rerun resumes training and scores only those."""
    out, _ = full
    cut = config[0] / "cut"
    shutil.copytree(out, cut)
    for p in ("mlx/run/adapter", "mlx/curve/step-000004", "mlx/test", "study.json"):
        shutil.rmtree(cut / p) if (cut / p).is_dir() else (cut / p).unlink()
    (cut / "mlx" / "run" / "summary.json").unlink()
    trained, scored = [], []
    real_train, real_eval = jobs.trainer.train, jobs.evaluation.run_eval
    monkeypatch.setattr(jobs.trainer, "train", lambda *a, **k: trained.append(k) or real_train(*a, **k))
    monkeypatch.setattr(jobs.evaluation, "run_eval", lambda **k: scored.append(k["label"]) or real_eval(**k))
    run_study(config[1], [], ["mlx", "torch"], cut, echo=lambda *a, **k: None, **OPTS)
    assert [k["resume"] for k in trained] == [True]
    assert scored == ["mlx curve step 4", "mlx tuned test"]
    assert _json(cut)["results"] == _json(out)["results"]  # exact resume: the same report


def test_other_settings_are_refused(full, config):
    out, _ = full
    with pytest.raises(ConfigError, match=r"other settings \(differs in config\)"):
        run_study(config[1], ["training.lr=0.001"], ["mlx", "torch"], out, echo=lambda *a, **k: None, **OPTS)


def test_cli_study_without_test_split(config, tmp_path):
    r = run_cli("study", "--config", config[1], "--set", "data.test=null", "--output", tmp_path / "s")
    assert r.exit_code == 2 and "needs a held-out test split" in r.output and not (tmp_path / "s").exists()


def test_demo_learned_form_example(tiny_model, tmp_path):
    """The demo's last stage: a held-out "locate" question, base vs tuned, and whether each answer
    opens in the training data's form."""
    from conftest import ROOT
    from common.data.recipes import run_recipe
    from jobs.demo import FORM, learned_form_example
    from jobs.session import open_model
    assert FORM.match("Article L100-3 du Code des relations entre le public et l'administration — emplacement")
    assert not FORM.match("L'article L100-3 du code des relations") and not FORM.match("Article 3 du Code")
    run_recipe("legi", [str(ROOT / "data/legi/LEGITEXT000031366350_crpa_sample.json")], tmp_path / "d", seed=0, options={})
    opened = open_model("torch", str(tiny_model))
    lines = []
    out = learned_form_example(tmp_path / "d" / "test.jsonl", opened, opened, lines.append, max_new_tokens=3)
    assert out["question"].startswith("Où se trouve l'article") and FORM.match(out["reference"])
    assert out["base"] == out["tuned"] and out["base_in_form"] is False  # same random model twice: same answer
    assert lines[-1].endswith("base no, tuned no")
