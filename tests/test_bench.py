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
    from common.runs.ownership import BENCH_MARKER, check_output_dir
    assert (out / BENCH_MARKER).is_file() and check_output_dir(out, "bench", "--output") is True  # a rerun may write it


def test_bench_dpo_times_ours_on_both_backends_beside_trl(tiny_model, tmp_path):
    """--objective dpo: ours-mlx, ours-torch and TRL's DPOTrainer (ref_model=None) on the same pairs;
    the torch pair compared (vs plain), no mlx-lm row (it has no DPO), no ragged set. From the same
    LoRA init on the same pairs in the same order, ours and TRL train to the same losses."""
    from helpers import write_jsonl
    from helpers import chat_pairs
    data = write_jsonl(tmp_path / "pairs.jsonl", chat_pairs(8))
    out = tmp_path / "bench"
    r = run_cli("bench", "--model", tiny_model, "--objective", "dpo", "--data", data, "--steps", "2", "--warmup", "1",
                "--max-length", "64", "--threads", "1", "--output", out)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "bench.json").read_text())
    assert res["config"]["objective"] == "dpo" and res["facts"]["flops_per_token"] == \
        6 * res["facts"]["n_frozen"] + 6 * res["facts"]["n_trainable"]
    rows = {r["run"]: r for r in res["rows"]}
    assert [(r["data"], r["run"], r["backend"]) for r in res["rows"]] == \
        [("pairs", "ours-mlx", "mlx"), ("pairs", "ours-torch", "torch"), ("pairs", "trl", "torch")]
    assert rows["ours-mlx"]["speed_vs_plain"] is None and rows["ours-torch"]["rss_vs_plain"] > 0
    assert abs(rows["ours-torch"]["pass_loss"] - rows["trl"]["pass_loss"]) < 1e-4, rows
    assert abs(rows["ours-mlx"]["pass_loss"] - rows["ours-torch"]["pass_loss"]) < 1e-4, rows
    table = (out / "bench.md").read_text()
    assert "| pairs | ours-torch | padded |" in table and "objective: DPO, beta 0.1" in table
    assert "DPOTrainer with ref_model=None" in table and "| mlx-lm |" not in table
