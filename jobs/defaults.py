"""Defaults that a job's function and the `cli.py` option driving it share, written once.
A plain module with no imports, so `cli.py --help` loads nothing for them.

`MAX_NEW_TOKENS`: the answer length each command generates by default, named by command (eval and
sweep score full answers; study and parity keep their many generations short; generate is for a look)."""

MAX_NEW_TOKENS = {"eval": 128, "sweep": 128, "study": 32, "generate": 64, "parity": 24}
