"""`merge`: fold an adapter into its base and save a full HF model (safetensors + config +
tokenizer), written to a temporary directory and renamed when complete."""
from __future__ import annotations

from pathlib import Path

from common.io import atomic_dir, write_json


def merge_adapter(backend: str, model: str, adapter: str, output: Path, allow_base_mismatch: bool = False) -> Path:
    from common.session import open_model
    opened = open_model(backend, model, adapter=adapter, allow_base_mismatch=allow_base_mismatch)
    with atomic_dir(output) as tmp:
        opened.backend.merge_and_save(tmp)
        opened.tokenizer.save_pretrained(str(tmp))
        write_json(tmp / "twinlora_merge.json", {"base_model": model, "adapter": str(adapter), "backend": backend,
                                                  "adapter_meta": {k: opened.meta.get(k) for k in ("base_model", "template")}
                                                  if opened.meta else None})
    return output
