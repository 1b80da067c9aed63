"""Shared layer of twinlora: data, templates, tokenization, adapter format, metrics, runs.

Nothing here imports mlx or torch at module level, so the CLI starts fast and a machine with
only one backend installed still runs it.
"""
