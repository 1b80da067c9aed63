"""How plain transformers and plain mlx-lm read a merged directory, against the unmerged model.

    python -m benchmarks.plain_readers MERGED_DIR --model BASE --adapter RUN/adapter

Prints max |Δlogit| over the parity prompts (raw text) and a long probe (past the sliding window):
- plain transformers (AutoModelForCausalLM on MERGED_DIR) vs twinlora's torch backend, base + adapter;
- plain mlx-lm (`mlx_lm.utils.load_model`, no twinlora override) vs the same;
- plain mlx-lm on MERGED_DIR vs plain mlx-lm on the base with the adapter's mlx-lm files
  (`adapter/mlx`, written by MLX runs): merged == unmerged under one reader;
- with `--gguf FILE` (written by `cli.py export-gguf MERGED_DIR FILE`): plain transformers reading
  the GGUF (`gguf_file=`) vs the same unmerged model: the GGUF round trip.
For Gemma the second differs by mlx-lm's bfloat16 embedding scale (docs/parity.md), the third not.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _probes(tokenizer, model_dir: Path) -> list[np.ndarray]:
    from common.models.families import parsed_config
    from jobs.parity import PROMPTS, long_probe_ids, long_probe_length
    out = [np.array([tokenizer(p)["input_ids"]], dtype=np.int32) for p in PROMPTS]
    n, _ = long_probe_length(parsed_config(model_dir))
    if n:
        out.append(np.array([long_probe_ids(tokenizer, n)], dtype=np.int32))
    return out


def _mlx(model_dir: Path, probes, adapter: Path | None = None) -> list[np.ndarray]:
    import mlx.core as mx
    from mlx_lm.utils import load_model
    model, _ = load_model(Path(model_dir))
    if adapter is not None:
        from mlx_lm.tuner.utils import load_adapters
        model = load_adapters(model, str(adapter))
    return [np.array(model(mx.array(p)).astype(mx.float32)) for p in probes]


def _hf(model_dir: Path, probes, gguf_file: str | None = None) -> list[np.ndarray]:
    import torch
    from transformers import AutoModelForCausalLM
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, **extra).eval()
    with torch.no_grad():
        return [model(input_ids=torch.from_numpy(p.astype(np.int64))).logits.numpy() for p in probes]


def _gap(a: list, b: list) -> float:
    return float(max(np.abs(x.astype(np.float64) - y).max() for x, y in zip(a, b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("merged")
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--gguf", help="a GGUF exported from MERGED_DIR: also compare plain transformers reading it")
    args = ap.parse_args()
    from common.models.resolve import resolve_model
    from jobs.session import open_model
    from common.training.tokenize import load_tokenizer
    base, merged, adapter = resolve_model(args.model), Path(args.merged), Path(args.adapter)
    probes = _probes(load_tokenizer(base), base)
    be = open_model("torch", args.model, adapter=str(adapter)).backend
    unmerged = [be.logits(p) for p in probes]
    del be
    rows = {"positions": [int(p.shape[1]) for p in probes],
            "plain_transformers_merged_vs_unmerged": _gap(_hf(merged, probes), unmerged)}
    plain_merged = _mlx(merged, probes)
    rows["plain_mlx_lm_merged_vs_unmerged"] = _gap(plain_merged, unmerged)
    if (adapter / "mlx" / "adapters.safetensors").is_file():
        rows["plain_mlx_lm_merged_vs_plain_mlx_lm_base_plus_adapter"] = _gap(
            plain_merged, _mlx(base, probes, adapter / "mlx"))
    if args.gguf:
        gguf = Path(args.gguf)
        rows["plain_transformers_gguf_vs_unmerged"] = _gap(_hf(gguf.parent, probes, gguf.name), unmerged)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
