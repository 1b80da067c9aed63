"""One twinlora process per output (common.runs.lock.OutputLock): study, sweep, eval, prepare, merge,
export-gguf, demo and bench refuse an output another live process is writing, with one line naming the output
(never the lock file), before writing anything; a lock left by a dead process is taken over."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from common.runs.lock import OutputLock
from error_rows import expect_error
from helpers import run_cli, tiny_config, write_jsonl


def _study_config(model, data, tmp):
    from common.config.schema import dump_yaml
    cfg = tiny_config(model, data, tmp / "unused", data={"valid": str(data), "test": str(data)})
    path = tmp / "study.yaml"
    path.write_text(dump_yaml(cfg), encoding="utf-8")
    return path


def _commands(model, data, tmp, out):
    """Each writing command pointed at `out`, with inputs that pass every check before the lock."""
    config = tmp / "sweep.yaml"
    from common.config.schema import dump_yaml
    config.write_text(dump_yaml(tiny_config(model, data, tmp / "unused")), encoding="utf-8")
    return {
        "study": ["study", "--config", _study_config(model, data, tmp), "--backend", "torch", "--no-forgetting",
                  "--output", out],
        "sweep": ["sweep", "--config", config, "--set", "lora.rank=2,4", "--output", out],
        "eval": ["eval", "--backend", "torch", "--model", model, "--data", data, "--output", out],
        "prepare": ["prepare", "jsonl", data, "--out", out],
        "merge": ["merge", "--model", model, "--adapter", tmp / "no-adapter", "--output", out],
        "export-gguf": ["export-gguf", model, out],
        "demo": ["demo", "--output", out, "--steps", "1"],
        "bench": ["bench", "--model", model, "--steps", "1", "--warmup", "0", "--repeats", "1", "--no-ragged",
                  "--backend", "torch", "--max-length", "64", "--output", out],
    }


@pytest.mark.parametrize("command", ["study", "sweep", "eval", "prepare", "merge", "export-gguf", "demo", "bench"])
def test_second_writer_is_refused(command, tiny_model, chat_jsonl, tmp_path):
    out = tmp_path / ("out.gguf" if command == "export-gguf" else "out")
    args = _commands(tiny_model, chat_jsonl, tmp_path, out)[command]
    before = sorted(p.name for p in tmp_path.iterdir())
    with OutputLock(out) as held:  # this process stands for the first run, alive and writing
        r = run_cli(*args)
        assert held.file.exists()
    line = expect_error(r)
    flag = "OUT_FILE" if command == "export-gguf" else "--out" if command == "prepare" else "--output"
    assert line == (f"error: {out}: another twinlora process is writing this output (pid {held.record['pid']} on "
                    f"{held.record['host']}, started {_time(held.record['started'])}) — fix: wait for it to "
                    f"finish, or choose another {flag}")
    assert ".lock" not in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert "[study]" not in r.output and "[sweep]" not in r.output


def _time(t: float) -> str:
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def test_stale_lock_of_a_dead_process_is_taken_over(chat_jsonl, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "prepared"
    lock = tmp_path / ".prepared.lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0.0}))
    r = run_cli("prepare", "jsonl", chat_jsonl, "--out", out)
    assert r.exit_code == 0, r.output
    assert (out / "manifest.json").is_file() and not lock.exists()


def test_lock_of_another_host_says_how_to_remove_it(tmp_path):
    from common.errors import UserError
    out = tmp_path / "out"
    lock = tmp_path / ".out.lock"
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0.0}))
    with pytest.raises(UserError) as exc:
        OutputLock(out).acquire()
    assert "on elsewhere" in str(exc.value) and f"delete {lock}" in str(exc.value)
    assert lock.exists() and not out.exists()
