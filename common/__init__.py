"""Shared layer of twinlora, at the bottom, in sub-packages by concept: `config/`, `data/`,
`training/` (what both backends are fed), `adapters/`, `models/`, `runs/` (run safety, atomic
writes) and `evaluation/`, plus `errors.py`. Each sub-package's `__init__` says what lives there and
what it may import; README's "Layout" shows which imports which (`scripts/import_picture.py`).

Nothing here imports a backend or a job (`tests/test_layers.py`), nor mlx or torch at module
level, so the CLI starts fast and a machine with only one backend installed still runs it.
"""
