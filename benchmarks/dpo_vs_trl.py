"""DPO throughput and peak memory: twinlora (torch, mlx) against TRL's DPOTrainer with
ref_model=None on the same pairs, model, LoRA, batch and max_length. Each side runs in its own
process, so the peak (CUDA max allocated, else the process's max RSS) is its own.

    python benchmarks/dpo_vs_trl.py --model embedded --data PAIRS.jsonl --steps 6

Tokens counted as TRL counts them: the non-padding tokens of the chosen and rejected sequences.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_bytes() -> int:
    import resource
    try:
        import torch
        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
    except ImportError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def ours(args, backend: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from common.config import load_config
    from jobs.trainer import train
    out = Path(args.work) / f"ours-{backend}"
    cfg = load_config(overrides={"model": {"path": args.model}, "data": {"train": args.data, "max_length": args.max_length},
                                 "training": {"objective": "dpo", "steps": args.steps, "batch_size": args.batch_size,
                                              "lr": 5e-6, "save_every": 0, "report_to": "none"},
                                 "lora": {"rank": 8, "alpha": 16}, "output": str(out)})
    s = train(cfg, backend, overwrite=True, echo=lambda *a, **k: None)
    return {"tokens_per_s": s["tokens_per_s"], "median_step_s": s["median_step_s"], "peak_bytes": s["peak_memory_bytes"]}


def trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer
    sys.path.insert(0, str(ROOT))
    from common.models import resolve_model
    from common.tokenize import load_tokenizer
    model_dir = resolve_model(args.model)
    rows = [json.loads(x) for x in Path(args.data).read_text().splitlines() if x.strip()]
    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    cfg = DPOConfig(output_dir=str(Path(args.work) / "trl"), per_device_train_batch_size=args.batch_size,
                    max_steps=args.steps, learning_rate=5e-6, max_length=args.max_length, report_to="none",
                    save_strategy="no", logging_steps=1, use_cpu=not torch.cuda.is_available(), beta=0.1)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32), ref_model=None,
                         args=cfg, train_dataset=Dataset.from_list(rows), processing_class=load_tokenizer(model_dir),
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                task_type="CAUSAL_LM"), callbacks=[Clock()])
    t0 = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - t0
    tokens = trainer._total_train_tokens
    times.sort()
    return {"tokens_per_s": tokens / elapsed, "median_step_s": times[len(times) // 2], "peak_bytes": peak_bytes()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="embedded")
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--work", default="runs/dpo-bench")
    p.add_argument("--side", choices=["torch", "mlx", "trl"])
    args = p.parse_args()
    if args.side:
        print(json.dumps(trl(args) if args.side == "trl" else ours(args, args.side)))
        return
    for side in ("torch", "mlx", "trl"):
        r = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--side", side], capture_output=True, text=True)
        if r.returncode:
            print(f"{side}: failed\n{r.stderr[-2000:]}")
            continue
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{side:6s} {res['tokens_per_s']:8.0f} tok/s  median step {res['median_step_s']:.3f} s  "
              f"peak {res['peak_bytes'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
