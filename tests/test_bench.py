"""`cli.py bench` runs end to end on a tiny model and writes its table with the ratio columns."""
from __future__ import annotations

import json

from helpers import run_cli


def test_bench_smoke(tiny_model, tmp_path):
    out = tmp_path / "bench"
    r = run_cli("bench", "--model", tiny_model, "--steps", "2", "--warmup", "1", "--no-ragged",
                "--max-length", "64", "--threads", "1", "--output", out)
    assert r.exit_code == 0, r.output
    table = (out / "bench.md").read_text()
    for run in ("ours-mlx", "mlx-lm", "ours-torch", "trl"):
        assert f"| {run} |" in table, run
    assert "vs plain" in table and "MFU" in table
    data = json.loads((out / "bench.json").read_text())
    assert data
    from common.ownership import BENCH_MARKER, check_output_dir
    assert (out / BENCH_MARKER).is_file() and check_output_dir(out, "bench", "--output") is True  # a rerun may write it
