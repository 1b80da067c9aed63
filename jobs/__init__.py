"""The jobs: what opens and drives a backend (train, sessions, sweep, study, eval, parity, merge,
demo). Above `backends/` and `common/`; `cli.py` calls one job per command."""
