"""The figures behind tests/test_families.py, printed: the seed-shaped tiny models, one per family
(tests/seed_models.py) on both backends.

    python -m benchmarks.seed_parity [--steps 10] [--out DIR]

Per model: base logits MLX vs torch (2100 positions for llama3 scaling, 40 past Gemma's window 8),
the same through plain mlx-lm (no twinlora override); a LoRA trained `--steps` on each backend from
the same init (max relative loss-curve gap; the MLX adapter's logits on both backends); the merge
(torch) read by plain transformers and plain mlx-lm against the unmerged model.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from helpers import chat_rows, run_cli, tiny_config, write_jsonl
    from seed_models import SEEDS, build_seed
    from test_families import gap, hf_logits, plain_mlx_logits, seq

    from backends.capabilities import PARITY_PAIR
    from common.runs.run_dir import RunDir
    from jobs.session import open_model
    from jobs.trainer import train

    root = Path(args.out or tempfile.mkdtemp(prefix="seed-parity-"))
    data = write_jsonl(root / "train.jsonl", chat_rows(12))
    report = {}
    for name in SEEDS:
        model = build_seed(name, root / name / "model")
        long_ids, ids = seq(name, long=True), seq(name)
        ref = open_model("torch", str(model)).backend.logits(long_ids)
        row = {"positions": int(long_ids.shape[1]),
               "base_mlx_vs_torch": gap(open_model("mlx", str(model)).backend.logits(long_ids), ref),
               "base_plain_mlx_lm_vs_torch": gap(plain_mlx_logits(model, long_ids), ref)}
        losses = {}
        for b in PARITY_PAIR:
            train(tiny_config(model, data, root / name / b, training={"steps": args.steps, "save_every": 0}), b,
                  echo=lambda *a, **k: None)
            losses[b] = [r["loss"] for r in RunDir(root / name / b).read_log() if r.get("event") == "train"]
        row["loss_first_last"] = [losses["torch"][0], losses["torch"][-1]]
        row["loss_max_rel_gap"] = max(abs(a - b) / abs(b) for a, b in zip(losses["mlx"], losses["torch"]))
        adapter = root / name / "mlx" / "adapter"
        unmerged = open_model("torch", str(model), adapter=adapter).backend.logits(ids)
        row["adapter_mlx_vs_torch"] = gap(open_model("mlx", str(model), adapter=adapter).backend.logits(ids), unmerged)
        merged = root / name / "merged"
        assert run_cli("merge", "--backend", "torch", "--model", model, "--adapter", adapter,
                       "--output", merged).exit_code == 0
        row["merged_plain_transformers_vs_unmerged"] = gap(hf_logits(merged, ids), unmerged)
        row["merged_plain_mlx_lm_vs_unmerged"] = gap(plain_mlx_logits(merged, ids), unmerged)
        report[name] = row
        print(name, json.dumps(row), flush=True)
    (root / "seed_parity.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {root / 'seed_parity.json'}")


if __name__ == "__main__":
    main()
