"""scripts/mac-check.sh cannot rot: its --dry-run (CPU, tiny random models, no install) runs every row
of the Mac table through the real training, parity, attention and plain mlx-lm code."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import ROOT


def test_mac_check_dry_run_fills_every_row(tmp_path):
    out, rows_file = tmp_path / "mac-check.md", tmp_path / "rows.json"
    env = dict(os.environ, TWINLORA_PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "mac-check.sh"), "--dry-run", "--output", str(out),
                        "--json", str(rows_file)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads(rows_file.read_text())
    rows = got["rows"]
    trains = [x for x in rows if x["check"] == "train"]
    assert [(x["backend"], x["device"]) for x in trains] == [("mlx", "cpu"), ("torch", "mps"), ("torch", "cpu")]
    assert trains[1]["result"] == "skipped: torch sees no MPS device"
    for x in (trains[0], trains[2]):
        assert x["result"].startswith("ok, loss ") and float(x["tokens/s"].replace(",", "")) > 0, x
    # same init, data and steps on both frameworks: the same final loss to the printed 3 decimals
    assert trains[0]["result"] == trains[2]["result"]
    parity = next(x for x in rows if x["check"].startswith("parity"))
    assert parity["result"].startswith("PASS: max |Δlogit|")
    assert float(parity["result"].split("|Δlogit| ")[1].split(",")[0]) < 2e-3
    att = got["attention"]
    assert [a["L"] for a in att] == [64, 128, 256]
    for a in att:      # our chunked attention against mx.fast SDPA, forward+backward, fp32
        assert a["rel_grad_diff"] < 1e-4 and a["chunked_ms"] > 0 and a["mx.fast_ms"] > 0 and a["exp"] == "power", a
    plain = [x for x in rows if x["check"].startswith("vs plain mlx-lm")]
    assert [x["check"] for x in plain] == ["vs plain mlx-lm: ours-mlx", "vs plain mlx-lm: mlx-lm"]
    assert all(float(x["tokens/s"].replace(",", "")) > 0 for x in plain)
    md = out.read_text()
    assert md.startswith("# Mac check") and "**Dry run on the CPU with tiny random models**" in md
    assert "- 256 tokens: cpu: chunked attention" in md      # the device choices it measured
    assert md.count("\n| ") == len(rows) + 1               # header + one line per row


@pytest.mark.skipif(platform.system() == "Darwin", reason="a Mac: the real run would start")
def test_mac_check_off_a_mac_says_so_and_installs_nothing(tmp_path):
    env = dict(os.environ, TWINLORA_MAC_VENV=str(tmp_path / "venv"))
    env.pop("TWINLORA_PYTHON", None)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "mac-check.sh")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "error: not an Apple-silicon Mac" in r.stderr and "--dry-run" in r.stderr
    assert r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "venv").exists()
