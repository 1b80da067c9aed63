"""Every writing command against the outputs that go wrong: a symbolic link to the user's folder, a
symlink loop, a dangling link, a read-only directory, an input file, a user folder with a file in
it. Each is refused in one line (exit 2, no traceback) before anything loads, every byte is
unchanged and nothing is left beside it. A link to an output of ours stands for its target
(common.runs.io.real_path): `--overwrite`, `--resume` and a rerun replace the target and keep the link."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from error_rows import expect_error
from helpers import chat_rows, run_cli, tiny_config, write_jsonl
from ownership_helpers import snapshot, user_dir


@pytest.fixture(scope="module")
def made(tiny_model, tmp_path_factory):
    """A finished 1-step run, an eval directory and configs, outside the tests' folders."""
    from common.config.schema import dump_yaml
    root = tmp_path_factory.mktemp("made")
    data = write_jsonl(root / "train.jsonl", chat_rows(6))
    r = run_cli("train", "--backend", "torch", "--model", tiny_model, "--data", data, "--output", root / "run",
                "--steps", "1")
    assert r.exit_code == 0, r.output
    (root / "eval").mkdir()
    (root / "eval" / "metrics.json").write_text(json.dumps({"metrics": {"rouge1_f": 0.5}}))
    (root / "sweep.yaml").write_text(dump_yaml(tiny_config(tiny_model, data, root / "unused")), encoding="utf-8")
    study = tiny_config(tiny_model, data, root / "unused", data={"valid": str(data), "test": str(data)})
    (root / "study.yaml").write_text(dump_yaml(study), encoding="utf-8")
    from helpers import chat_pairs
    pairs = write_jsonl(root / "pairs.jsonl", chat_pairs(4))
    return {"root": root, "data": data, "run": root / "run", "adapter": root / "run" / "adapter", "pairs": pairs}


def commands(model, made, out) -> dict[str, tuple[str, list]]:
    """Every command that writes: (its output flag, its arguments with the output at `out`)."""
    a, d, root = made["adapter"], made["data"], made["root"]
    train = ["train", "--backend", "torch", "--model", model, "--data", d, "--output", out, "--steps", "1"]
    return {
        "train": ("--output", train),
        "train --overwrite": ("--output", train + ["--overwrite"]),
        "train --resume": ("--output", train + ["--resume"]),
        "merge": ("--output", ["merge", "--adapter", a, "--model", model, "--output", out]),
        "convert": ("DST", ["convert", a, out, "--to", "mlx"]),
        "eval": ("--output", ["eval", "--backend", "torch", "--model", model, "--data", d, "--output", out,
                              "--metrics", "rouge", "--max-new-tokens", "2"]),
        "compare": ("--output", ["compare", root / "eval", root / "eval", "--output", out]),
        "prepare": ("--out", ["prepare", "jsonl", d, "--out", out]),
        "prepare pairs": ("--out", ["prepare", "pairs", d, "--out", out, "--option", f"model={model}",
                                    "--option", "limit=2"]),
        "train dpo": ("--output", ["train", "--backend", "torch", "--model", model, "--data", made["pairs"],
                                   "--set", "training.objective=dpo", "--output", out, "--steps", "1"]),
        "export-gguf": ("OUT_FILE", ["export-gguf", model, out]),
        "parity": ("--output", ["parity", "--adapter", a, "--model", model, "--output", out]),
        "sweep": ("--output", ["sweep", "--config", root / "sweep.yaml", "--set", "lora.rank=2,4", "--output", out]),
        "study": ("--output", ["study", "--config", root / "study.yaml", "--backend", "torch", "--no-forgetting",
                               "--output", out]),
        "study --shots --ranks": ("--output", ["study", "--config", root / "study.yaml", "--backend", "torch",
                                               "--no-forgetting", "--shots", "0,1", "--ranks", "2", "--output", out]),
        "demo": ("--output", ["demo", "--output", out, "--steps", "1"]),
        "bench": ("--output", ["bench", "--model", model, "--steps", "1", "--warmup", "0", "--repeats", "1",
                               "--no-ragged", "--backend", "torch", "--max-length", "64", "--output", out]),
        "bench --lengths": ("--output", ["bench", "--model", model, "--lengths", "64", "--backend", "torch",
                                         "--output", out]),
    }


def _target(kind: str, tmp: Path, made, monkeypatch) -> tuple[Path, str | None]:
    """(the output path, the exact line every command must print, or None: any one line)."""
    home = user_dir(tmp / "home")
    if kind == "link to a user folder":
        os.symlink(home, tmp / "link")
        return tmp / "link", None
    if kind == "symlink loop":
        os.symlink(tmp / "loop", tmp / "loop")
        return tmp / "loop", ("{flag} {out}: the output is a symbolic link that loops (it never reaches a file or "
                              "directory) — fix: remove or repoint the link, or choose another output path")
    if kind == "dangling link":
        os.symlink(tmp / "nowhere", tmp / "dangling")
        return tmp / "dangling", ("{flag} {out}: the output is a symbolic link to {nowhere}, which does not exist — "
                                  "fix: create {nowhere} first, or choose another output path")
    if kind == "read-only directory":
        ro = tmp / "ro"
        ro.mkdir(mode=0o555)
        real = os.access  # root ignores permission bits: answer as the kernel does for a read-only mount
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == ro and mode & os.W_OK
                            else real(p, mode, *a, **k))
        return ro, ("{flag} {out}: cannot write in {out} (read-only or no permission) — fix: choose an output path "
                    "in a writable directory")
    if kind == "input file":
        return made["data"], None
    return home, None  # a user folder with files in it


KINDS = ("link to a user folder", "symlink loop", "dangling link", "read-only directory", "input file",
         "user folder")


@pytest.mark.parametrize("kind", KINDS)
def test_every_command_refuses_a_bad_output(kind, tiny_model, made, tmp_path, monkeypatch):
    out, expected = _target(kind, tmp_path, made, monkeypatch)
    monkeypatch.chdir(tmp_path)
    before, names = {**snapshot(tmp_path), **snapshot(made["root"])}, sorted(os.listdir(tmp_path))
    for name, (flag, args) in commands(tiny_model, made, out).items():
        r = run_cli(*args)
        if kind not in ("symlink loop", "dangling link") and "Error: Invalid value" in r.output:
            # click's own check of the argument: a directory where a file is expected
            assert r.exit_code == 2 and "Traceback" not in r.output, (name, r.output)
            line = None
        else:
            assert r.exit_code == 2, (name, r.output[-3000:])
            line = expect_error(r)  # one line, exit 2, no traceback
        if expected and line is not None:
            assert line == "error: " + expected.format(flag=flag, out=out, nowhere=tmp_path / "nowhere"), (name, line)
        assert "backend=" not in r.output, (name, r.output)  # refused before any model loaded
        assert {**snapshot(tmp_path), **snapshot(made["root"])} == before, name
        assert sorted(os.listdir(tmp_path)) == names, (name, os.listdir(tmp_path))  # no lock, staging, temporary
        assert not (tmp_path / "nowhere").exists()


def test_a_link_to_our_run_is_replaced_at_its_target(tiny_model, made, tmp_path):
    """--overwrite through a link: the run it points at is replaced, the link kept (not orphaned)."""
    import shutil
    real = tmp_path / "real"
    shutil.copytree(made["run"], real)
    os.symlink(real, tmp_path / "link")
    train = ["train", "--backend", "torch", "--model", tiny_model, "--data", made["data"], "--output",
             tmp_path / "link", "--steps"]
    r = run_cli(*train, "2", "--overwrite")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "link").is_symlink() and os.readlink(tmp_path / "link") == str(real)
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]  # no .link.old, no staging, no lock left
    assert [json.loads(x)["step"] for x in (real / "log.jsonl").read_text().splitlines()
            if json.loads(x).get("event") == "train"] == [1, 2]
    r = run_cli(*train, "3", "--resume")
    assert r.exit_code == 0, r.output
    assert json.loads((real / "summary.json").read_text())["steps"] == 3
    # a command that replaces its whole output (atomic_dir) replaces the target too
    os.symlink(real / "adapter", tmp_path / "alink")
    (tmp_path / "mlx").mkdir()
    assert run_cli("convert", made["adapter"], tmp_path / "mlx" / "a", "--to", "mlx").exit_code == 0
    os.symlink(tmp_path / "mlx" / "a", tmp_path / "mlink")
    r = run_cli("convert", made["adapter"], tmp_path / "mlink", "--to", "mlx")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "mlink").is_symlink() and sorted(os.listdir(tmp_path / "mlx")) == ["a"]


def test_two_names_of_one_run_share_one_lock(tiny_model, made, tmp_path):
    from common.runs.lock import RunLock
    os.symlink(made["run"], tmp_path / "link")
    with RunLock(made["run"]):
        r = run_cli("train", "--backend", "torch", "--model", tiny_model, "--data", made["data"], "--output",
                    tmp_path / "link", "--steps", "2", "--resume")
    expect_error(r, "another training is using this run directory")
