"""`sweep`: a 2×2 grid on the tiny model gives one table row per run; a second invocation trains
nothing; an interrupted sweep finishes only the missing runs (resuming the cut one exactly)."""
from __future__ import annotations

import csv

import pytest

from helpers import chat_rows, run_cli, tiny_config, write_jsonl

import jobs.evaluation
import jobs.fit
import jobs.trainer
from common.config.schema import dump_yaml
from common.errors import TrainingError
from jobs.sweep import grid_points, parse_grid, run_sweep

SETS = ["lora.rank=2,4", "training.lr=1e-3,1e-2"]
NAMES = ["rank-2_lr-1e-3", "rank-2_lr-1e-2", "rank-4_lr-1e-3", "rank-4_lr-1e-2"]
COLUMNS = ["run", "lora.rank", "training.lr", "final_loss", "val_loss",
           "rouge1_f", "rouge2_f", "rougeL_f", "length_pred_words_mean", "seconds"]


def _rows(out):
    with open(out / "sweep.csv", newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def base(tiny_model, tmp_path_factory):
    """A base config (2 steps, checkpoint every step) with train and validation files."""
    root = tmp_path_factory.mktemp("sweep")
    rows = chat_rows(12)
    for name, part in (("train", rows[:8]), ("valid", rows[8:])):
        write_jsonl(root / f"{name}.jsonl", part)
    cfg = tiny_config(tiny_model, root / "train.jsonl", root / "unused", data={"valid": str(root / "valid.jsonl")},
                      training={"steps": 2, "save_every": 1})
    path = root / "base.yaml"
    path.write_text(dump_yaml(cfg), encoding="utf-8")
    return root, path


@pytest.fixture(scope="module")
def full(base):
    """The uninterrupted 2×2 sweep with generation metrics on 2 validation records."""
    root, config = base
    out, lines = root / "full", []
    rows = run_sweep(config, SETS, "mlx", out, metrics=["rouge", "length"], limit_eval=2,
                     echo=lambda m="", **k: lines.append(m), max_new_tokens=8)
    return out, rows, lines


def test_grid_names_and_fixed_overrides():
    axes, fixed = parse_grid(SETS + ["training.steps=3", "lora.target_modules=[q_proj,v_proj]"])
    assert axes == [("lora.rank", ["2", "4"]), ("training.lr", ["1e-3", "1e-2"])]
    assert fixed == ["training.steps=3", "lora.target_modules=[q_proj,v_proj]"]
    assert [n for n, _ in grid_points(axes)] == NAMES


def test_sweep_writes_one_row_per_run(full):
    out, rows, lines = full
    table = _rows(out)
    assert table[0] == COLUMNS
    assert [r[0] for r in table[1:]] == NAMES
    assert [(r[1], r[2]) for r in table[1:]] == [("2", "0.001"), ("2", "0.01"), ("4", "0.001"), ("4", "0.01")]
    for r in rows:
        assert r["val_loss"] > 0 and r["final_loss"] > 0 and 0 <= r["rougeL_f"] <= 1 and r["seconds"] >= 0
        assert (out / r["run"] / "adapter" / "twinlora.json").is_file()
        assert (out / r["run"] / "eval" / "metrics.json").is_file()
    md = (out / "sweep.md").read_text(encoding="utf-8")
    assert md.count("\n| rank-") == 4 and "Lowest validation loss" in md
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from jobs.sweep import figure
    fig = figure(rows, out)
    assert [ax.get_ylim()[0] for ax in fig.axes] == [0.0, 0.0]  # both y axes start at zero
    assert sum("training" == line.rsplit(": ", 1)[-1] for line in lines) == 4


def test_second_run_trains_nothing(full, base, monkeypatch):
    out, _, _ = full
    before = (out / "sweep.csv").read_text(encoding="utf-8")

    def boom(*a, **k):
        raise AssertionError("nothing should be trained or generated again")
    monkeypatch.setattr(jobs.trainer, "train", boom)
    monkeypatch.setattr(jobs.evaluation, "run_eval", boom)
    lines = []
    run_sweep(base[1], SETS, "mlx", out, metrics=["rouge", "length"], limit_eval=2,
              echo=lambda m="", **k: lines.append(m), max_new_tokens=8)
    assert sum(line.endswith("finished earlier, skipped") for line in lines) == 4
    assert sum(line.endswith("metrics computed earlier, kept") for line in lines) == 4
    assert (out / "sweep.csv").read_text(encoding="utf-8") == before


def test_interrupted_sweep_finishes_only_missing_runs(full, base, monkeypatch):
    root, config = base
    out = root / "cut"
    real_train, calls, cut = jobs.trainer.train, [], {"at": 3}

    def cut_third(cfg, *a, **k):
        calls.append(cfg.name)
        if len(calls) == cut["at"]:  # Ctrl-C during the 2nd step of the 3rd run (its step-1 checkpoint exists)
            def lr_at(step, *args):
                if step == 1:
                    raise KeyboardInterrupt
                return real_lr_at(step, *args)
            real_lr_at = jobs.fit.lr_at
            monkeypatch.setattr(jobs.fit, "lr_at", lr_at)
        return real_train(cfg, *a, **k)
    monkeypatch.setattr(jobs.trainer, "train", cut_third)
    with pytest.raises(TrainingError, match="interrupted"):
        run_sweep(config, SETS, "mlx", out, echo=lambda *a, **k: None)
    assert calls == NAMES[:3] and not (out / NAMES[2] / "adapter").exists()
    assert (out / NAMES[2] / "checkpoints" / "step-000001").is_dir() and not (out / "sweep.csv").exists()

    monkeypatch.undo()
    monkeypatch.setattr(jobs.trainer, "train", cut_third)
    calls.clear()
    cut["at"] = None  # no further interruption
    lines = []
    rows = run_sweep(config, SETS, "mlx", out, echo=lambda m="", **k: lines.append(m))
    assert calls == NAMES[2:]  # only the cut run and the one never started
    assert f"[sweep] 3/4 {NAMES[2]}: resuming from step-000001" in lines
    assert f"[sweep] 4/4 {NAMES[3]}: training" in lines
    assert _rows(out)[0] == COLUMNS[:5] + ["seconds"] and len(rows) == 4
    # Exact resume: the same losses as the uninterrupted sweep.
    for got, want in zip(rows, full[1]):
        assert got["run"] == want["run"]
        assert got["final_loss"] == pytest.approx(want["final_loss"], abs=1e-6)
        assert got["val_loss"] == pytest.approx(want["val_loss"], abs=1e-6)


def test_changed_config_is_refused(full, base):
    from common.errors import ConfigError
    with pytest.raises(ConfigError, match="differs in training.steps"):
        run_sweep(base[1], SETS + ["training.steps=3"], "mlx", full[0], echo=lambda *a, **k: None)
    with pytest.raises(ConfigError, match="trained with --backend mlx"):
        run_sweep(base[1], SETS, "torch", full[0], echo=lambda *a, **k: None)


def test_cli_sweep(base, tmp_path):
    res = run_cli("sweep", "--config", base[1], "--set", "lora.rank=2,4", "--set", "training.steps=1",
                  "--backend", "mlx", "--output", tmp_path / "s")
    assert res.exit_code == 0, res.output
    assert [r[0] for r in _rows(tmp_path / "s")[1:]] == ["rank-2", "rank-4"]
    assert "| rank-4 |" in res.output
