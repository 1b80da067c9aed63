"""Exact resume: a run killed with SIGKILL at a random-ish step and resumed with --resume ends with
the very same adapter (and optimizer state) as an uninterrupted run, on each backend, for SFT and
for preference tuning (training.objective: dpo); and the same
seed + data + backend always give the same adapter.

The killed run is a real `cli.py train` subprocess; `TWINLORA_TEST_STEP_DELAY` (a test hook read by
the training loop) makes it sleep after every step so it can be killed mid-run, sometimes while a
checkpoint is being written.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from helpers import chat_rows, max_abs_diff, tensors, tiny_config, write_jsonl

BACKENDS = ("mlx", "torch")
STEPS = 8


def quiet(*a, **k):
    pass


def _bit_equal(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def _reference_runs(root: Path, model, rows: list[dict], **training) -> tuple[Path, dict]:
    """A config file (8 steps, a checkpoint every step, 6 batches per epoch) and, per backend, an
    uninterrupted reference run trained in-process from that same file."""
    from common.config.schema import dump_yaml, load_config
    from jobs.trainer import train
    data = root / "train.jsonl"
    write_jsonl(data, rows)
    cfg = tiny_config(model, data, root / "unused", training={"steps": STEPS, "save_every": 1, **training},
                      lora={"dropout": 0.1})  # dropout: the per-step RNG re-seed matters too
    cfg_file = root / "config.yaml"
    cfg_file.write_text(dump_yaml(cfg))
    refs = {}
    for b in BACKENDS:
        out = root / f"ref-{b}"
        train(load_config(cfg_file, {"output": str(out)}), b, echo=quiet)
        refs[b] = out
    return cfg_file, refs


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    """SFT on 12 chat records."""
    return _reference_runs(tmp_path_factory.mktemp("resume"), tiny_model, chat_rows(12))


@pytest.fixture(scope="module")
def dpo_setup(tiny_model, tmp_path_factory):
    """Preference tuning (training.objective: dpo) on 12 chat pairs: its reference log-probs and
    its logged reward metrics must come back exactly too."""
    from helpers import chat_pairs
    return _reference_runs(tmp_path_factory.mktemp("resume-dpo"), tiny_model, chat_pairs(12), objective="dpo")


def _cli(cfg_file: Path, backend: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "cli.py", "train", "--config", str(cfg_file), "--backend", backend,
            "--output", str(out), *extra]


@pytest.mark.parametrize("objective", ["sft", "dpo"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_then_resume_is_bit_exact(request, objective, backend, tmp_path):
    cfg_file, refs = request.getfixturevalue("setup" if objective == "sft" else "dpo_setup")
    out = tmp_path / "run"
    rng = random.Random()
    kill_after = rng.randint(2, STEPS - 3)  # a checkpoint that must exist before the kill
    extra_wait = rng.uniform(0.0, 0.45)     # then kill somewhere in the next step (or its checkpoint write)
    env = {**os.environ, "TWINLORA_TEST_STEP_DELAY": "0.3"}
    log = open(tmp_path / "killed.log", "wb")
    proc = subprocess.Popen(_cli(cfg_file, backend, out), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    target = out / "checkpoints" / f"step-{kill_after:06d}"
    deadline = time.time() + 240
    while not target.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(extra_wait)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    msg = f"kill after step {kill_after} + {extra_wait:.2f}s\n" + (tmp_path / "killed.log").read_text(errors="replace")
    assert proc.returncode == -signal.SIGKILL, msg
    assert not (out / "adapter").exists(), "the run finished before the kill: " + msg

    r = subprocess.run(_cli(cfg_file, backend, out, "--resume"), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, msg + r.stdout + r.stderr
    resumed_at = int(r.stdout.split("(resuming at step ")[1].split(")")[0])
    assert kill_after <= resumed_at < STEPS, r.stdout

    a = tensors(out / "adapter" / "adapter_model.safetensors")
    b = tensors(refs[backend] / "adapter" / "adapter_model.safetensors")
    diff = max_abs_diff(a, b)
    print(f"\n[resume {backend} {objective}] killed after step {kill_after} (+{extra_wait:.2f}s), resumed at step "
          f"{resumed_at}: max |Δ adapter| = {diff:.3e}, bit-exact = {_bit_equal(a, b)}")
    assert _bit_equal(a, b), f"max |Δ| = {diff:.3e}"
    final = f"checkpoints/step-{STEPS:06d}/optimizer.safetensors"
    assert _bit_equal(tensors(out / final), tensors(refs[backend] / final))
    from common.runs.run_dir import RunDir
    steps = [x["step"] for x in RunDir(out).read_log() if x.get("event") == "train"]
    assert steps == list(range(1, STEPS + 1))
    if objective == "dpo":  # the losses and rewards logged by the resumed steps are the uninterrupted run's
        from common.training.objectives import DPO_METRICS
        keys = ("step", "loss", "grad_norm", *DPO_METRICS)
        got, want = ([{k: x[k] for k in keys} for x in RunDir(d).read_log() if x.get("event") == "train"]
                     for d in (out, refs[backend]))
        assert got[resumed_at:] == want[resumed_at:], (got[resumed_at:], want[resumed_at:])
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_then_resume_is_bit_exact(setup, backend, tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) in step 5 saves step 4; --resume ends where the uninterrupted run does."""
    from backends import get_backend
    from common.config.schema import load_config
    from common.errors import TrainingError
    from jobs.trainer import train
    cfg_file, refs = setup
    cls = get_backend(backend)
    orig, calls = cls.accumulate, {"n": 0}

    def interrupt_in_step_5(self, batch, sync=True):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return orig(self, batch, sync)
    monkeypatch.setattr(cls, "accumulate", interrupt_in_step_5)
    cfg = load_config(cfg_file, {"output": str(tmp_path / "run"), "training": {"save_every": 0}})
    with pytest.raises(TrainingError, match="progress saved at step 4"):
        train(cfg, backend, echo=quiet)
    monkeypatch.setattr(cls, "accumulate", orig)
    cfg = load_config(cfg_file, {"output": str(tmp_path / "run"), "training": {"save_every": 0}})
    train(cfg, backend, resume=True, echo=quiet)
    a = tensors(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    b = tensors(refs[backend] / "adapter" / "adapter_model.safetensors")
    assert _bit_equal(a, b), f"max |Δ| = {max_abs_diff(a, b):.3e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_data_same_adapter(setup, backend, tmp_path):
    from common.config.schema import load_config
    from jobs.trainer import train
    cfg_file, refs = setup
    train(load_config(cfg_file, {"output": str(tmp_path / "again")}), backend, echo=quiet)
    a = tensors(tmp_path / "again" / "adapter" / "adapter_model.safetensors")
    b = tensors(refs[backend] / "adapter" / "adapter_model.safetensors")
    assert _bit_equal(a, b), f"max |Δ| = {max_abs_diff(a, b):.3e}"
    # not vacuous: training moved the weights (LoRA B starts at zero)
    assert all(np.abs(w).max() > 0 for k, w in a.items() if k.endswith("lora_B.weight"))
