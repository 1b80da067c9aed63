"""Shared layer of twinlora, at the bottom: config, data, templates, tokenization, adapter format,
metrics, runs.

Nothing here imports a backend or a job (`tests/test_layers.py`), nor mlx or torch at module
level, so the CLI starts fast and a machine with only one backend installed still runs it.
"""
