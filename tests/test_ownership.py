"""Nothing the user owns is lost (issue 14): every command pointed at the user's files leaves them
byte for byte; `--overwrite` replaces a run only once the new one is complete; one training per
run directory; `--resume` extends a finished run exactly; outputs get the usual permissions;
`prepare` replaces its files all at once."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from helpers import run_cli, write_jsonl
from ownership_helpers import _wait_for, snapshot, user_dir


def _train(model, data, out, *extra, steps="2", backend="torch"):
    return run_cli("train", "--backend", backend, "--model", model, "--data", data, "--output", out,
                   "--steps", steps, *extra)


@pytest.fixture(scope="module")
def made(tiny_model, tmp_path_factory):
    """A finished 2-step run (its adapter), an eval directory, and a merged model, outside the user's home."""
    from helpers import chat_rows
    root = tmp_path_factory.mktemp("made")
    data = write_jsonl(root / "train.jsonl", chat_rows(6))
    assert _train(tiny_model, data, root / "run").exit_code == 0
    ev = root / "eval"
    (ev).mkdir()
    (ev / "metrics.json").write_text(json.dumps({"metrics": {"rouge1_f": 0.5}}))
    return {"data": data, "run": root / "run", "adapter": root / "run" / "adapter", "eval": ev}


def _commands(model, made, target):
    """Every command that writes, with its output at `target`."""
    a, d = made["adapter"], made["data"]
    return {
        "train": ["train", "--backend", "torch", "--model", model, "--data", d, "--output", target, "--steps", "1"],
        "train --overwrite": ["train", "--backend", "torch", "--model", model, "--data", d, "--output", target,
                              "--steps", "1", "--overwrite"],
        "train --resume": ["train", "--backend", "torch", "--model", model, "--data", d, "--output", target,
                           "--steps", "1", "--resume"],
        "train --overwrite --resume": ["train", "--backend", "torch", "--model", model, "--data", d, "--output",
                                       target, "--steps", "1", "--overwrite", "--resume"],
        "merge": ["merge", "--adapter", a, "--model", model, "--output", target],
        "convert mlx": ["convert", a, target, "--to", "mlx"],
        "convert common": ["convert", a, target, "--to", "common"],
        "eval": ["eval", "--backend", "torch", "--model", model, "--data", d, "--output", target, "--metrics", "rouge",
                 "--max-new-tokens", "2"],
        "compare": ["compare", made["eval"], made["eval"], "--output", target],
        "prepare": ["prepare", "jsonl", d, "--out", target],
        "export-gguf": ["export-gguf", model, target],
        "sweep": ["sweep", "--set", "lora.rank=2,4", "--backend", "torch", "--output", target],
        "demo": ["demo", "--output", target, "--steps", "1"],
        "bench": ["bench", "--model", model, "--steps", "1", "--warmup", "0", "--repeats", "1", "--no-ragged",
                  "--backend", "torch", "--max-length", "64", "--output", target],
    }


TARGETS = ("home", "home/sub", "empty", "dot", "home/notes.txt")


@pytest.mark.parametrize("target", TARGETS)
def test_no_command_touches_user_files(tiny_model, made, tmp_path, monkeypatch, target):
    """Each writing command, its output aimed at the user's directory, a sub-folder of it, the
    current directory ("" and "."), or a file of theirs: refused, one line, every file unchanged."""
    home = user_dir(tmp_path / "home")
    monkeypatch.chdir(home)
    path = {"home": str(home), "home/sub": str(home / "sub"), "empty": "", "dot": ".",
            "home/notes.txt": str(home / "notes.txt")}[target]
    before = snapshot(tmp_path)
    refused = {}
    for name, args in _commands(tiny_model, made, path).items():
        r = run_cli(*args)
        assert r.exit_code == 2 and "Traceback" not in r.output, (name, r.output)
        # one line of ours, or click's own check of the argument (a file where a directory is expected...)
        assert r.output.count("error:") == 1 or "Error: Invalid value" in r.output, (name, r.output)
        refused[name] = r.output.count("error:") == 1
        assert snapshot(tmp_path) == before, name
        assert sorted(os.listdir(tmp_path)) == ["home"], (name, os.listdir(tmp_path))  # no lock, staging, temp
    assert sum(refused.values()) >= 8, refused


def test_outputs_equal_to_inputs_are_refused(tiny_model, made, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    adapter = tmp_path / "adapter"
    shutil.copytree(made["adapter"], adapter)
    before = snapshot(tmp_path)
    cases = [["merge", "--adapter", adapter, "--model", model, "--output", model],
             ["merge", "--adapter", adapter, "--model", model, "--output", adapter],
             ["merge", "--adapter", adapter, "--model", model, "--output", tmp_path],
             ["convert", adapter, adapter, "--to", "mlx"],
             ["convert", adapter, adapter, "--to", "common"],
             ["eval", "--backend", "torch", "--model", model, "--data", made["data"], "--adapter", adapter,
              "--output", adapter, "--metrics", "rouge"],
             ["prepare", "jsonl", made["data"], "--out", made["data"].parent]]
    for args in cases:
        r = run_cli(*args)
        assert r.exit_code == 2 and "would replace the input" in r.output, (args, r.output)
    r = run_cli("export-gguf", model, model / "model.safetensors")  # a file of the input, not a GGUF
    assert r.exit_code == 2 and "was not written by twinlora" in r.output, r.output
    assert snapshot(tmp_path) == before


def test_overwrite_keeps_the_old_run_until_the_new_one_is_complete(tiny_model, made, tmp_path, monkeypatch):
    from backends.torch.backend import Backend
    run = tmp_path / "run"
    shutil.copytree(made["run"], run)
    old = snapshot(run)
    d = made["data"]
    # 1. the new run fails at step 2 (NaN loss): the old run is untouched
    orig, calls = Backend.accumulate, {"n": 0}

    def nan_at_2(self, batch, sync=True):
        calls["n"] += 1
        s, n = orig(self, batch, sync)
        return (float("nan"), n) if calls["n"] == 2 else (s, n)
    monkeypatch.setattr(Backend, "accumulate", nan_at_2)
    r = _train(tiny_model, d, run, "--overwrite", "--lr", "0.002", steps="3")
    assert r.exit_code == 2 and "loss became nan at step 2" in r.output, r.output
    assert snapshot(run) == old
    monkeypatch.undo()
    # 2. interrupted (Ctrl-C) at step 3 after a checkpoint at step 2: old run still whole
    calls["n"] = 0

    def interrupt_at_3(self, batch, sync=True):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return orig(self, batch, sync)
    monkeypatch.setattr(Backend, "accumulate", interrupt_at_3)
    r = _train(tiny_model, d, run, "--overwrite", "--lr", "0.002", steps="4")
    staging = tmp_path / ".run.overwrite"
    assert r.exit_code == 2 and f"{staging}/checkpoints/step-000002" in r.output, r.output
    assert snapshot(run) == old
    monkeypatch.undo()
    # 3. --overwrite --resume continues the replacement and swaps it in at the end
    r = _train(tiny_model, d, run, "--overwrite", "--resume", "--lr", "0.002", steps="4")
    assert r.exit_code == 0 and "resuming at step 2" in r.output and "replaced the previous one" in r.output, r.output
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no staging, no .run.old, no lock
    cfg = (run / "config.yaml").read_text()
    assert "lr: 0.002" in cfg and "steps: 4" in cfg
    steps = [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines() if '"train"' in l]
    assert steps == [1, 2, 3, 4]
    assert json.loads((run / "adapter" / "twinlora.json").read_text())["metrics"]["steps"] == 4


def test_concurrent_runs_second_is_refused(tiny_model, made, tmp_path):
    """A `cli.py train` and a `cli.py train --resume` into one --output (other learning rates): the
    second is refused in one line before loading the model while the first trains; the first, stopped
    with SIGTERM, then resumed, ends with one consistent log and its own config."""
    import signal
    out = tmp_path / "run"

    def cmd(lr, *extra):
        return [sys.executable, "cli.py", "train", "--backend", "torch", "--model", str(tiny_model), "--data",
                str(made["data"]), "--output", str(out), "--steps", "4", "--lr", lr, *extra]
    # the first run sleeps 60 s after each step: it is still training however slowly the second starts
    first = subprocess.Popen(cmd("1e-3"), cwd=ROOT, env={**os.environ, "TWINLORA_TEST_STEP_DELAY": "60"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: (out / "log.jsonl").is_file() and '"train"' in (out / "log.jsonl").read_text()), \
            "first run never started"
        t0 = time.time()
        second = subprocess.run(cmd("5e-3", "--resume"), cwd=ROOT, capture_output=True, text=True, timeout=300)
        refused_after = time.time() - t0
        assert second.returncode == 2, second.stderr
        assert "another training is using this run directory" in second.stderr and f"pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr and "backend=torch" not in second.stdout
        assert first.poll() is None, "the first run should still be training when the second is refused"
        print(f"second run refused {refused_after:.2f} s after it started, while the first was training")
        first.send_signal(signal.SIGTERM)
        o, e = first.communicate(timeout=300)
        assert first.returncode == 2 and "interrupted by SIGTERM; progress saved at step 1" in e, e
    finally:
        if first.poll() is None:
            first.kill()
    assert not (tmp_path / ".run.lock").exists()
    r = _train(tiny_model, made["data"], out, "--resume", "--lr", "1e-3", steps="4")
    assert r.exit_code == 0 and "resuming at step 1" in r.output, r.output
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in rows if r["event"] in ("start", "resume")] == ["start", "resume"]
    assert [r["step"] for r in rows if r["event"] == "train"] == [1, 2, 3, 4]
    assert "lr: 0.001" in (out / "config.yaml").read_text()
    assert not (tmp_path / ".run.lock").exists()


def test_resume_extends_a_finished_run_exactly(tiny_model, made, tmp_path):
    """More steps on --resume continue the run: with a constant schedule, 4 steps then --resume to
    6 give the very adapter of 6 steps in one go."""
    from safetensors.numpy import load_file
    d, args = made["data"], ("--set", "training.schedule=constant")
    assert _train(tiny_model, d, tmp_path / "straight", *args, steps="6").exit_code == 0
    assert _train(tiny_model, d, tmp_path / "extended", *args, steps="4").exit_code == 0
    r = _train(tiny_model, d, tmp_path / "extended", *args, "--resume", steps="6")
    assert r.exit_code == 0 and "resuming at step 4" in r.output, r.output
    a = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "extended" / "adapter" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    steps = [json.loads(l)["step"] for l in (tmp_path / "extended" / "log.jsonl").read_text().splitlines()
             if '"train"' in l]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_rank_change_on_mlx(tiny_model, made, tmp_path):
    out = tmp_path / "run"
    assert _train(tiny_model, made["data"], out, backend="mlx").exit_code == 0
    before = snapshot(out)
    r = _train(tiny_model, made["data"], out, "--resume", "--rank", "16", steps="3", backend="mlx")
    assert r.exit_code == 2 and "lora.rank: 8 → 16" in r.output, r.output
    assert snapshot(out) == before


def test_outputs_follow_the_umask(tiny_model, made, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert _train(tiny_model, made["data"], out, steps="1").exit_code == 0
        merged = tmp_path / "merged"
        assert run_cli("merge", "--adapter", out / "adapter", "--model", tiny_model, "--output", merged).exit_code == 0
    finally:
        os.umask(old)
    for d in (out, out / "adapter", out / "checkpoints" / "step-000001", merged):
        assert d.stat().st_mode & 0o777 == 0o755, d
    for f in (out / "adapter" / "adapter_model.safetensors", out / "adapter" / "twinlora.json",
              out / "checkpoints" / "step-000001" / "adapter_model.safetensors", merged / "model.safetensors"):
        assert f.stat().st_mode & 0o777 == 0o644, f


def test_resume_cleans_adapter_temporaries(tiny_model, made, tmp_path):
    out = tmp_path / "run"
    assert _train(tiny_model, made["data"], out).exit_code == 0
    shutil.rmtree(out / "adapter")
    (out / ".adapter.abc123.tmp").mkdir()  # a kill while the adapter was being written
    (out / ".adapter.abc123.tmp" / "adapter_model.safetensors").write_bytes(b"half")
    r = _train(tiny_model, made["data"], out, "--resume")
    assert r.exit_code == 0, r.output
    assert not list(out.glob(".*")) and (out / "adapter" / "twinlora.json").is_file()


def test_prepare_replaces_all_files_at_once(made, tmp_path, monkeypatch):
    import common.data.splits as splits
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(20)]
    src = write_jsonl(tmp_path / "src.jsonl", rows)
    out = tmp_path / "prepared"
    assert run_cli("prepare", "jsonl", src, "--out", out).exit_code == 0
    before = snapshot(out)
    real = splits.write_jsonl

    def fail_on_test(path, rows_):
        if Path(path).name == "test.jsonl":
            raise OSError(5, "I/O error")
        return real(path, rows_)
    monkeypatch.setattr(splits, "write_jsonl", fail_on_test)
    write_jsonl(src, rows[:10])
    with pytest.raises(OSError):
        from common.data.recipes import run_recipe
        run_recipe("jsonl", [str(src)], out)
    assert snapshot(out) == before  # train/valid not replaced by the half-written new set
    assert sorted(os.listdir(tmp_path)) == ["prepared", "src.jsonl"]  # no temporary left


def test_stale_lock_is_taken_over(tmp_path):
    import socket

    from common.errors import TrainingError
    from common.runs.lock import RunLock
    run = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / ".run.lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    with RunLock(run):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(TrainingError, match="another training"):
            RunLock(run).acquire()  # the holder (this process) is alive
    assert not lock.exists()
    # a live pid that started after the lock was written: the pid was reused, the lock is stale
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": 1000.0}))
    with RunLock(run):
        pass
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    with pytest.raises(TrainingError, match="on elsewhere"):
        RunLock(run).acquire()  # another host: cannot tell, refuse and say how to remove it
    lock.write_text("")  # a writer killed before it wrote: stale once old
    with pytest.raises(TrainingError):
        RunLock(run).acquire()
    os.utime(lock, (time.time() - 60, time.time() - 60))
    with RunLock(run):
        pass
    assert not lock.exists() and not run.exists()


def test_sigkill_during_overwrite_keeps_old_run_and_resumes_exactly(tiny_model, made, tmp_path):
    """`--overwrite` killed with SIGKILL mid-run: the previous run is byte for byte intact; then
    `--overwrite --resume` finishes the replacement with the adapter of an uninterrupted run."""
    import signal

    from safetensors.numpy import load_file
    d, args = made["data"], ("--set", "training.save_every=1", "--lr", "0.003")
    assert _train(tiny_model, d, tmp_path / "ref", *args, steps="6").exit_code == 0
    run = tmp_path / "run"
    shutil.copytree(made["run"], run)
    old = snapshot(run)
    cmd = [sys.executable, "cli.py", "train", "--backend", "torch", "--model", str(tiny_model), "--data", str(d),
           "--output", str(run), "--steps", "6", *args, "--overwrite"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "TWINLORA_TEST_STEP_DELAY": "0.5"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / ".run.overwrite" / "log.jsonl"
    assert _wait_for(lambda: log.is_file() and '"step": 3' in log.read_text()), "the overwrite never reached step 3"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert snapshot(run) == old  # the previous run is untouched
    r = _train(tiny_model, d, run, *args, "--overwrite", "--resume", steps="6")  # the stale lock is taken over
    assert r.exit_code == 0 and "resuming at step" in r.output, r.output
    a = load_file(str(tmp_path / "ref" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert sorted(os.listdir(tmp_path)) == ["ref", "run"]


def test_write_refused_by_the_system_is_one_line(made, tmp_path, monkeypatch):
    """A write the system refuses after the checks (a filesystem remounted read-only meanwhile):
    one line naming the file, exit 2, nothing half-written."""
    import errno
    real = os.replace

    def read_only(src, dst, *a, **k):
        if Path(dst).name == "compare.md":
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", read_only)
    out = tmp_path / "cmp"
    r = run_cli("compare", made["eval"], made["eval"], "--output", out)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    lines = [l for l in r.output.splitlines() if l.startswith("error:")]
    assert lines == [f"error: {out / 'compare.md'}: cannot write here: the filesystem is read-only "
                     "— fix: choose another output path"], r.output
    assert not list(out.glob(".*"))


def test_resume_config_changes_listed():
    """Which differences --resume refuses (model, data, LoRA, optimizer) and which it allows."""
    from common.config.schema import Config
    from common.config.resume import config_changes
    saved = Config().to_dict()
    new = Config().to_dict()
    new["training"].update(steps=500, save_every=7, eval_every=3, log_every=2, keep_checkpoints=5)
    new.update(output="elsewhere", name="x")
    assert config_changes(saved, new) == []
    new["lora"]["alpha"] = 32.0
    new["data"]["template"] = "raw"
    new["training"]["seed"] = 3
    assert config_changes(saved, new) == ["data.template: 'chat' → 'raw'", "lora.alpha: 16.0 → 32.0",
                                          "training.seed: 0 → 3"]
    del saved["training"]["seed"]  # a key the checkpoint's schema did not have yet: it ran with the default
    assert "training.seed: 0 → 3" in config_changes(saved, new)
    new["training"]["seed"] = 0
    assert "training.seed: 0 → 0" not in config_changes(saved, new) and len(config_changes(saved, new)) == 2


def test_demo_starts_over_only_in_a_demo_directory(tmp_path, monkeypatch):
    import common.data.recipes as recipes
    from jobs.demo import run_demo
    from common.errors import UserError

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop
    monkeypatch.setattr(recipes, "run_recipe", stop)
    old = tmp_path / "demo"
    (old / "data").mkdir(parents=True)
    (old / "data" / "manifest.json").write_text("{}")
    with pytest.raises(Stop):
        run_demo(old, 1, echo=lambda *a, **k: None)  # a previous demo of ours: removed, then rebuilt
    assert not old.exists()
    mine = user_dir(tmp_path / "mine")
    before = snapshot(mine)
    with pytest.raises(UserError, match="not a twinlora demo directory"):
        run_demo(mine, 1, echo=lambda *a, **k: None)
    assert snapshot(mine) == before


def test_parity_output_checked_before_loading(tiny_model, tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    r = run_cli("parity", "--model", tiny_model, "--output", mine)
    assert r.exit_code == 2 and "was not written by twinlora" in r.output and "prompt:" not in r.output, r.output
    r = run_cli("parity", "--model", tiny_model, "--output", tmp_path)
    assert r.exit_code == 2 and "is a directory" in r.output, r.output
    assert mine.read_text() == "mine"
