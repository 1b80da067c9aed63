"""Base models: where a model comes from and how it is read (`resolve.py`: embedded models, the hub,
GGUF, local folders), one `Family` record per model type (`families.py`), quantization schemes
(`quantize.py`), the SentencePiece vocabulary rebuilt from a GGUF file (`gguf_vocab.py`), device
choices (`devices.py`) and the glibc heap policy (`heap.py`).

Imports from common/: `errors` and `runs.io` (the model cache's atomic writes), nothing else; never
a backend, a job or the CLI, and no mlx or torch at module level.
"""
