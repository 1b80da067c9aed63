"""Adapters: the one adapter format on disk (PEFT names and shapes; `format.py`), the base-model
check every adapter goes through (`base.py`), conversion to and from mlx-lm's layout (`convert.py`),
GGUF export of a merged model (`gguf_export.py`) and the model card written beside an adapter
(`model_card.py`).

Imports from common/: `errors`, `runs` (atomic writes, ownership of the output) and `models` (which
base an adapter names, family records for GGUF); never a backend, a job or the CLI.
"""
