"""`merge`: fold an adapter into its base and save a full HF model (safetensors + config +
tokenizer), written to a temporary directory and renamed when complete."""
from __future__ import annotations

import shutil
from pathlib import Path

from common.io import atomic_dir, write_json


def merge_adapter(backend: str, model: str, adapter: str, output: Path, allow_base_mismatch: bool = False) -> Path:
    from common.session import open_model
    opened = open_model(backend, model, adapter=adapter, allow_base_mismatch=allow_base_mismatch)
    with atomic_dir(output) as tmp:
        opened.backend.merge_and_save(tmp)
        opened.tokenizer.save_pretrained(str(tmp))
        # transformers 5 saves tokenizer.json only; GGUF export of SentencePiece models (Gemma)
        # needs the base's tokenizer.model, so it travels with the merged model
        spm = Path(opened.backend.model_dir) / "tokenizer.model"
        if spm.is_file() and not (tmp / "tokenizer.model").exists():
            shutil.copyfile(spm, tmp / "tokenizer.model")
        write_json(tmp / "twinlora_merge.json", {"base_model": model, "adapter": str(adapter), "backend": backend,
                                                  "adapter_meta": {k: opened.meta.get(k) for k in ("base_model", "template")}
                                                  if opened.meta else None})
    return output
