"""`cli.py bench`'s defaults, written once: the CLI flags show them and `run_bench` uses them.
A plain dict in a module importing only the declared backends (no framework), so `cli.py --help`
does not load the benchmark.

They fit a 2-core CPU in a few minutes; raise them for a real model on a GPU or a Mac."""

from backends.capabilities import PARITY_PAIR

BENCH = {"model": "embedded", "steps": 6, "warmup": 2, "repeats": 1, "batch_size": 2, "max_length": 128,
         "rank": 8, "backends": PARITY_PAIR, "output": "runs/bench", "mem_limit_gib": 10.0,
         "objective": "sft"}
