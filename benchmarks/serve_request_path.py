"""Where a served request's time to first token goes, stage by stage, in-process on MLX (what
`cli.py serve --backend mlx` runs for one request): rendering and tokenizing the prompt, making the
adapter active, and the first token without and with the prompt's keys and values kept from an
earlier answer (as serve and mlx_lm.server keep them).

    python benchmarks/serve_request_path.py --adapter runs/smol/adapter [--repeats 5]

Prints the median milliseconds of each stage.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Write a long story about a lighthouse keeper and the sea."


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", required=True, help="A twinlora adapter directory.")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from jobs.serving import load_served
    from jobs.session import eos_ids, prompt_ids
    served = load_served("mlx", None, [("a", args.adapter)], lambda m: None)
    opened, target = served.opened, served.targets["a"]
    be, eos, msgs = opened.backend, eos_ids(opened.tokenizer), [{"role": "user", "content": PROMPT}]
    ids = prompt_ids(opened, msgs, target.template, target.system)
    rows = {"render + tokenize the prompt": median_ms(lambda: prompt_ids(opened, msgs, target.template,
                                                                          target.system), args.repeats),
            "make the adapter active (set_active_adapter)": median_ms(lambda: be.set_active_adapter("default"),
                                                                     args.repeats)}
    be.cache_prompts(0)
    rows[f"first token, the {len(ids)}-token prompt computed in full"] = median_ms(
        lambda: be.generate(ids, 1, eos), args.repeats)
    be.cache_prompts(10)
    be.generate(ids, 4, eos)
    rows["first token, the prompt's keys and values kept"] = median_ms(lambda: be.generate(ids, 1, eos), args.repeats)
    print(f"median of {args.repeats}, milliseconds\n\n| stage | ms |\n|---|---:|")
    for k, v in rows.items():
        print(f"| {k} | {v:.1f} |")


if __name__ == "__main__":
    main()
