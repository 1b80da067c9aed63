"""What `--resume` does, and what an interruption tells the user to do (docs/errors.md E161-E162,
"What `--resume` may change"): no run, no resume; an early-stopped or finished run says why it does
not train, and trains on when more steps are asked; study and sweep, which have no `--resume`, say
to run them again."""
from __future__ import annotations

import json

from common.runs.run_dir import RunDir
from error_rows import expect_error
from helpers import run_cli, tiny_config, write_jsonl

EARLY = ("--valid", None, "--set", "training.eval_every=1", "--set", "training.early_stopping_patience=1",
         "--set", "training.early_stopping_min_delta=100", "--set", "training.save_every=1")


def _train(model, data, out, *extra, steps="4"):
    return run_cli("train", "--backend", "torch", "--model", model, "--data", data, "--output", out, "--steps", steps,
                   *extra)


def _early(data):
    return tuple(str(data) if a is None else a for a in EARLY)


def _train_steps(out):
    return [r["step"] for r in RunDir(out).read_log() if r.get("event") == "train"]


def test_resume_without_a_run_is_refused(tiny_model, chat_jsonl, tmp_path):
    out = tmp_path / "nope"
    line = expect_error(_train(tiny_model, chat_jsonl, out, "--resume"))
    assert line == (f"error: {out}: --resume: there is no run here to continue (the output does not exist) — fix: "
                    "check --output, or drop --resume to start a new run")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [chat_jsonl.name]
    out.mkdir()
    line = expect_error(_train(tiny_model, chat_jsonl, out, "--resume"))
    assert "(the output is empty)" in line and not any(out.iterdir())


def test_early_stopped_run_says_why_and_trains_on_with_more_steps(tiny_model, chat_jsonl, tmp_path):
    """min_delta 100: only the first validation improves, patience 1 stops the run at step 2 of 4."""
    out, early = tmp_path / "run", _early(chat_jsonl)
    r = _train(tiny_model, chat_jsonl, out, *early)
    assert r.exit_code == 0 and "early stopping at step 2" in r.output, r.output
    r = _train(tiny_model, chat_jsonl, out, *early, "--resume")  # same steps: nothing to do, and it says so
    assert r.exit_code == 0, r.output
    assert ("[twinlora] note: this run stopped early at step 2 (no validation improvement for 1 validations); "
            "nothing to train, only its outputs are written again — ask for more than 4 steps to train on") in r.output
    assert _train_steps(out) == [1, 2]
    r = _train(tiny_model, chat_jsonl, out, *early, "--resume", steps="6")  # more steps: trains on, as HF's Trainer
    assert r.exit_code == 0, r.output
    assert "this run had stopped early at step 2; training on to step 6 as asked" in r.output
    assert "early stopping at step 3" in r.output and _train_steps(out) == [1, 2, 3]  # its count was kept
    r = _train(tiny_model, chat_jsonl, out, *early, "--resume", "--set", "training.early_stopping_patience=null",
               steps="6")
    assert r.exit_code == 0 and "training on to step 6 (early stopping is off now)" in r.output, r.output
    assert _train_steps(out) == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "adapter" / "twinlora.json").read_text())["metrics"]["steps"] == 6


def test_finished_run_resumed_with_its_steps_says_so(tiny_model, chat_jsonl, tmp_path):
    out = tmp_path / "run"
    assert _train(tiny_model, chat_jsonl, out, steps="2").exit_code == 0
    r = _train(tiny_model, chat_jsonl, out, "--resume", steps="2")
    assert r.exit_code == 0 and ("[twinlora] note: this run has already done its 2 steps; nothing to train, only "
                                 "its outputs are written again — ask for more steps to train on") in r.output
    assert _train_steps(out) == [1, 2]


def _interrupt_second_step(monkeypatch):
    from backends.torch.backend import Backend
    orig, calls = Backend.accumulate, {"n": 0}

    def fake(self, batch, sync=True):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return orig(self, batch, sync)
    monkeypatch.setattr(Backend, "accumulate", fake)


def test_interrupted_study_says_run_it_again(tiny_model, chat_jsonl, tmp_path, monkeypatch):
    from common.config.schema import dump_yaml
    cfg = tiny_config(tiny_model, chat_jsonl, tmp_path / "unused", data={"valid": str(chat_jsonl), "test": str(chat_jsonl)},
                      training={"save_every": 1})
    config = tmp_path / "study.yaml"
    config.write_text(dump_yaml(cfg), encoding="utf-8")
    _interrupt_second_step(monkeypatch)
    out = tmp_path / "study"
    r = run_cli("study", "--config", config, "--backend", "torch", "--no-forgetting", "--variability-items", "0",
                "--test-items", "2", "--curve-items", "2", "--max-new-tokens", "2", "--n-boot", "100", "--output", out)
    line = expect_error(r)
    assert line == (f"error: {out / 'torch' / 'run' / 'checkpoints' / 'step-000001'}: interrupted; progress saved at "
                    "step 1 — fix: run the same study command again: finished stages are kept and training resumes "
                    "from its last checkpoint")
    assert "--resume" not in r.output


def test_interrupted_sweep_says_run_it_again(tiny_model, chat_jsonl, tmp_path, monkeypatch):
    from common.config.schema import dump_yaml
    config = tmp_path / "sweep.yaml"
    config.write_text(dump_yaml(tiny_config(tiny_model, chat_jsonl, tmp_path / "unused", training={"save_every": 1})),
                      encoding="utf-8")
    _interrupt_second_step(monkeypatch)
    out = tmp_path / "sweep"
    line = expect_error(run_cli("sweep", "--config", config, "--set", "lora.rank=2", "--output", out))
    assert line.endswith("interrupted; progress saved at step 1 — fix: run the same sweep command again: finished "
                         "runs are kept and this one resumes from its last checkpoint")
    assert "--resume" not in line
