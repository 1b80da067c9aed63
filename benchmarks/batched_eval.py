"""Eval answering speed on MLX: items/s of `generate_batch` (batches of 8, mlx-lm's BatchGenerator)
against one prompt at a time (`generate`), the same questions, greedy, in one process, cells
interleaved (one-at-a-time, batched, one-at-a-time, ...) so both see the same minutes of a noisy
machine; prints each cell's median and spread, the ratio, and how many answers are identical.

    python -m benchmarks.batched_eval [--model embedded --items 16 --batch 8 --max-new-tokens 32 --repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def squad_prompts(tokenizer, n: int) -> list[list[int]]:
    """The first `n` SQuAD questions of the shipped sample, each with its context, as chat prompts."""
    data = json.loads((ROOT / "data" / "squad" / "dev-v2.0-sample.json").read_text())["data"]
    qs = [(p["context"], q["question"]) for art in data for p in art["paragraphs"] for q in p["qas"]][:n]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": f"{c}\n\nQuestion: {q}"}],
                                           add_generation_prompt=True, tokenize=False) for c, q in qs]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def one_at_a_time(be, prompts, max_new, stops):
    return [be.generate(p, max_new, stops) for p in prompts]


def batched(be, prompts, max_new, stops, batch: int):
    return [a for i in range(0, len(prompts), batch) for a in be.generate_batch(prompts[i: i + batch], max_new, stops)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from jobs.session import eos_ids, open_model
    opened = open_model("mlx", a.model)
    prompts, stops = squad_prompts(opened.tokenizer, a.items), eos_ids(opened.tokenizer)
    runs = {"one at a time": lambda: one_at_a_time(opened.backend, prompts, a.max_new_tokens, stops),
            f"batch {a.batch}": lambda: batched(opened.backend, prompts, a.max_new_tokens, stops, a.batch)}
    rates, answers = {k: [] for k in runs}, {}
    for k, f in runs.items():       # warm-up (compiles, allocations), not timed
        answers[k] = f()
    for _ in range(a.repeats):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            rates[k].append(len(prompts) / (time.perf_counter() - t))
    print(f"model {a.model}, {len(prompts)} SQuAD items (prompts {min(map(len, prompts))}-{max(map(len, prompts))} "
          f"tokens), greedy, max {a.max_new_tokens} new tokens, {a.repeats} interleaved repeats")
    print("| run | items/s median | min–max |\n|---|---:|---:|")
    for k, r in rates.items():
        print(f"| {k} | {statistics.median(r):.2f} | {min(r):.2f}–{max(r):.2f} |")
    base, fast = (statistics.median(r) for r in rates.values())
    same = sum(x == y for x, y in zip(*answers.values()))
    print(f"batched / one at a time: {fast / base:.2f}×; identical answers: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
