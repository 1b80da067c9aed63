"""Every row of docs/errors.md: a bad input gives one clear line (file/line/key + fix), a non-zero
exit, no traceback, and nothing half-written.

Each row is a function registered under its id (E01...) in one of the topic modules
(data_rows, config_rows, model_rows, training_rows, eval_rows, safety_rows); `test_error_row[E01]` runs it and checks
that the line it returns matches the pattern the table documents for that id, so the table and
the behaviour cannot drift apart.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT
from error_rows import ROWS, quiet, train_cli, write
from helpers import run_cli, tiny_config, write_jsonl
import data_rows  # noqa: F401  (registers its rows)
import config_rows  # noqa: F401  (registers its rows)
import model_rows  # noqa: F401  (registers its rows)
import training_rows  # noqa: F401  (registers its rows)
import eval_rows  # noqa: F401  (registers its rows)
import safety_rows  # noqa: F401  (registers its rows)
import serve_rows  # noqa: F401  (registers its rows)

DOC = ROOT / "docs" / "errors.md"


@pytest.fixture(scope="module")
def trained_adapter(tiny_model, tmp_path_factory) -> Path:
    """A 1-step torch adapter on tiny_model; rows copy it before damaging it."""
    from jobs.trainer import train
    root = tmp_path_factory.mktemp("errors_run")
    data = write_jsonl(root / "train.jsonl", [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(4)])
    train(tiny_config(tiny_model, data, root / "run", training={"steps": 1}), "torch", echo=quiet)
    return root / "run" / "adapter"


@pytest.fixture
def ctx(request, tiny_model, chat_jsonl, tmp_path, monkeypatch):
    def adapter_copy():
        dst = tmp_path / "adapter"
        shutil.copytree(request.getfixturevalue("trained_adapter"), dst)
        return dst
    return SimpleNamespace(model=tiny_model, data=chat_jsonl, tmp=tmp_path, out=tmp_path / "run",
                           mp=monkeypatch, adapter_copy=adapter_copy, request=request)


# ---------------------------------------------------------------- the table and the runner

def doc_patterns() -> dict[str, str]:
    """Row id → message pattern, from docs/errors.md (`| E01 | ... | `` pattern `` | ...`)."""
    out = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*(E\d+)\s*\|", line)
        if m:
            pats = re.findall(r"``\s(.+?)\s``", line)
            assert len(pats) == 1, line
            out[m.group(1)] = pats[0]
    return out


def pattern_regex(pattern: str) -> re.Pattern:
    """`<file>`-style placeholders match any text; everything else literally."""
    parts = re.split(r"<[a-z_ ]+>", pattern)
    return re.compile(".+?".join(re.escape(p) for p in parts) + r"\Z")


def test_every_rows_module_is_imported():
    """A new tests/*_rows.py file registers its rows only once imported above."""
    import sys
    assert sorted(p.stem for p in (ROOT / "tests").glob("*_rows.py") if p.stem != "error_rows") == sorted(
        m for m in sys.modules if m.endswith("_rows") and m != "error_rows")


def test_table_and_tests_list_the_same_rows():
    rows = doc_patterns()
    assert sorted(rows) == sorted(ROWS)
    assert len(rows) >= 30


@pytest.mark.parametrize("rid", sorted(ROWS))
def test_error_row(rid, ctx):
    line = ROWS[rid](ctx)
    pattern = doc_patterns()[rid]
    assert pattern_regex(pattern).match(line), f"\n{rid} documented: {pattern}\n{rid} actual:     {line}"


def test_manifest_from_prepare_trains(ctx):
    """The positive side of E45-E47: `train --data manifest.json` uses the manifest's train/valid files."""
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(20)]
    src = write_jsonl(ctx.tmp / "src.jsonl", rows)
    prepared = ctx.tmp / "prepared"
    assert run_cli("prepare", "jsonl", src, "--out", prepared).exit_code == 0
    r = train_cli(ctx, data=prepared / "manifest.json")
    assert r.exit_code == 0, r.output
    meta = json.loads((ctx.out / "adapter" / "twinlora.json").read_text())
    assert meta["data"]["train"]["path"] == str(prepared / "train.jsonl")
    assert meta["data"]["valid"]["path"] == str(prepared / "valid.jsonl")


def test_manifest_loader_refuses_escapes(tmp_path):
    from common.data.manifest import load_manifest, resolve_split
    from common.errors import DataError
    (tmp_path / "train.jsonl").write_text("{}\n")
    for bad in ("../x/train.jsonl", "/etc/train.jsonl", "a/../../train.jsonl", "C:\\data\\train.jsonl",
                "..\\train.jsonl"):
        write(tmp_path / "manifest.json", json.dumps({"files": {bad: {"rows": 1}}}))
        with pytest.raises(DataError):
            load_manifest(tmp_path / "manifest.json")
    write(tmp_path / "manifest.json", json.dumps({"files": {"train.jsonl": {"rows": 1}, "valid.jsonl": {"rows": 0}}}))
    m = load_manifest(tmp_path / "manifest.json")
    assert resolve_split(m, "train") == tmp_path / "train.jsonl"
    assert resolve_split(m, "valid", required=False) is None


def test_torn_log_line_is_ignored(tmp_path):
    from common.runs.run_dir import RunDir
    run = RunDir(tmp_path)
    run.log({"event": "train", "step": 1, "loss": 1.0})
    with open(run.log_file, "a") as fh:
        fh.write('{"event": "train", "step": 2, "lo')  # a kill in the middle of a line
    assert [r["step"] for r in run.read_log()] == [1]
    run.truncate_log(1)
    run.log({"event": "train", "step": 2, "loss": 0.5})
    assert [r["step"] for r in run.read_log()] == [1, 2]


def test_stale_checkpoint_temporaries_are_cleaned(tmp_path):
    from common.runs.run_dir import RunDir
    run = RunDir(tmp_path)
    w = {"a": np.ones(3, np.float32)}
    run.save_checkpoint(1, w, {}, 0, {"total_steps": 3}, keep=2)
    root = tmp_path / "checkpoints"
    (root / ".step-000002.abc.tmp").mkdir()        # killed while writing step 2
    shutil.copytree(root / "step-000001", root / ".step-000003.old")  # killed between the two renames
    (root / ".step-000000.del").mkdir()             # killed while pruning
    run.clean_stale()
    assert sorted(p.name for p in root.iterdir()) == ["step-000001", "step-000003"]
    run.load_checkpoint(root / "step-000003")
