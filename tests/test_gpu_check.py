"""scripts/gpu-check.sh cannot rot: its --dry-run (CPU, tiny random models, no install) runs every
row of the GPU table through the real training, QLoRA and parity code."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("bitsandbytes")


def test_gpu_check_dry_run_fills_every_row(tmp_path):
    out, rows_file = tmp_path / "gpu-check.md", tmp_path / "rows.json"
    env = dict(os.environ, TWINLORA_PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--dry-run", "--output", str(out),
                        "--json", str(rows_file)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
    checks = [row["check"] for row in rows]
    assert checks == ["train"] * 4 + ["QLoRA NF4 + adamw", "parity torch-cpu vs mlx-cpu", "mlx on CUDA",
                                      "MFU, Llama-3.2-1B shape"]
    trains = [row for row in rows if row["check"] == "train"]
    assert {(row["dtype"], row["attention"]) for row in trains} == {
        (d, a) for d in ("float32", "bfloat16") for a in ("eager", "sdpa")}
    for row in trains + [rows[4], rows[7]]:
        assert row["result"].startswith("ok, loss "), row
        assert float(row["tokens/s"].replace(",", "")) > 0 and row["MFU"].endswith("%"), row
        assert row["peak memory"].endswith("MiB RSS"), row
    assert rows[4]["dtype"] == "float32 + 4bit"
    assert rows[5]["result"].startswith("PASS: max |Δlogit|"), rows[5]
    assert rows[6]["result"].startswith("skipped")
    md = out.read_text()
    assert md.startswith("# GPU check") and "**Dry run on the CPU with tiny random models**" in md
    assert md.count("\n| ") == len(rows) + 1  # header + one line per row (the separator starts with "|-")


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine: the real run would start")
def test_gpu_check_without_a_gpu_says_so_and_installs_nothing(tmp_path):
    env = dict(os.environ, TWINLORA_GPU_VENV=str(tmp_path / "venv"))
    env.pop("TWINLORA_PYTHON", None)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "error: no NVIDIA GPU" in r.stderr and "--dry-run" in r.stderr
    assert not (tmp_path / "venv").exists()
