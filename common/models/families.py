"""One `Family` record per model_type (`FAMILIES`): everything the backends, merge, parity and GGUF
export need to know about a family — the keys mlx-lm must read, what it would compute differently
(refused), whether the loss may run the head on target rows only, the embedding scale, the norm
offset, the tokenizer kind and llama.cpp's architecture. Adding a family is one record here and
one row in tests/seed_models.py (docs/adding-a-family.md).

One config.json, one model: what mlx-lm must read so it builds the model transformers builds.

transformers 5 parses config.json (legacy keys, defaults, `rope_parameters` flat or nested per
layer type, `layer_types`) into one config; mlx-lm reads config.json raw, with its own defaults
(`rope_theta` 10000 for llama, top-level `rope_scaling`, Gemma 3's `rope_local_base_freq` and
`sliding_window_pattern`, qwen2's `tie_word_embeddings` True...). So the source of truth is
transformers' parsed config, and `mlx_keys` turns it into the flat keys mlx-lm reads, written next
to `rope_parameters` in every config.json we write and passed as overrides when the MLX backend
loads any directory.

`problems` lists the settings one side would silently ignore (attention softcapping, a qwen2
sliding window, a rope scaling type mlx-lm lacks, a Gemma layer pattern mlx-lm cannot express):
such a model is refused rather than trained differently on the two backends (each record's
`checks`). Families other than those in VERIFIED (records with `proven`) load, but parity has not
been proven for them: `parity` says so.

Pure functions over dicts; `parsed_config` imports transformers' config classes only (no torch).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# rope types mlx-lm's initialize_rope computes as transformers does (checked by the tests for these)
MLX_ROPE = {"default", "linear", "llama3"}


# ------------------------------------------------------------------ checks: what mlx-lm would read differently

def _rope_mlx_computes(text: dict) -> list[str]:
    rp = text.get("rope_parameters") or {}
    if rp and (rp.get("rope_type") or "default") not in MLX_ROPE:
        return [f"rope type {rp.get('rope_type')!r} (mlx-lm computes {', '.join(sorted(MLX_ROPE))} "
                "as transformers does)"]
    return []


def _no_sliding_window(text: dict) -> list[str]:
    if text.get("use_sliding_window"):
        return [f"use_sliding_window (mlx-lm's {text['model_type']} attends to the whole sequence)"]
    return []


def _derived_head_dim(text: dict) -> list[str]:
    head_dim = text.get("head_dim")
    if head_dim and head_dim != text["hidden_size"] // text["num_attention_heads"]:
        return [f"head_dim {head_dim} != hidden_size / num_attention_heads (mlx-lm's {text['model_type']} derives it)"]
    return []


def _a_full_layer(text: dict) -> list[str]:
    if (text.get("layer_types") or []) and "full_attention" not in text["layer_types"]:
        return [f"no full_attention layer in layer_types (mlx-lm's {text['model_type']} needs one)"]
    return []


def _silu(text: dict) -> list[str]:
    if text.get("hidden_act", "silu") != "silu":
        return [f"hidden_act {text['hidden_act']!r} (mlx-lm's {text['model_type']} uses silu)"]
    return []


def _no_attention_bias(text: dict) -> list[str]:
    if text.get("attention_bias"):
        return [f"attention_bias (mlx-lm's {text['model_type']} has no attention biases)"]
    return []


def _gemma3_layers_and_rope(text: dict) -> list[str]:
    rp = text.get("rope_parameters") or {}
    full, local = rp.get("full_attention") or {}, rp.get("sliding_attention") or {}
    layer_types = text.get("layer_types") or []
    pattern = gemma3_pattern(layer_types)
    out = []
    if pattern is None or pattern > len(layer_types):
        out.append("layer_types is not 'every P-th layer full attention, the rest sliding' with at least one "
                   "full layer, the only pattern mlx-lm's gemma3_text builds")
    if (local.get("rope_type") or "default") != "default":
        out.append(f"the sliding layers' rope is scaled ({local.get('rope_type')}); mlx-lm scales only the "
                   "full-attention layers")
    if (full.get("rope_type") or "default") not in MLX_ROPE:
        out.append(f"rope type {full.get('rope_type')!r} (mlx-lm computes {', '.join(sorted(MLX_ROPE))} "
                   "as transformers does)")
    return out


def _gemma3_body(text: dict) -> list[str]:
    out = [f"{key}={text[key]} (mlx-lm's gemma3_text has no softcapping)"
           for key in ("attn_logit_softcapping", "final_logit_softcapping") if text.get(key)]
    if text.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        out.append(f"hidden_activation {text['hidden_activation']!r} (mlx-lm's gemma3_text uses gelu-tanh)")
    if text.get("attention_bias"):
        out.append("attention_bias (mlx-lm's gemma3_text has no attention biases)")
    if text.get("use_bidirectional_attention"):
        out.append("use_bidirectional_attention (mlx-lm's gemma3_text is causal)")
    return out


# ------------------------------------------------------------------ the records

@dataclass(frozen=True)
class Family:
    """Everything twinlora's backends, merge, parity and GGUF export know about one model_type.
    Adding a family is one record here and one row in tests/seed_models.py (docs/adding-a-family.md)."""
    model_type: str
    proven: str | None = None          # what tests/test_families.py proves equal on both backends (None: loads, unproven)
    shared_keys: tuple[str, ...] = ()  # parsed-config keys copied to the top level, read alike by mlx-lm
    checks: tuple[Callable[[dict], list[str]], ...] = ()  # settings mlx-lm would ignore: the model is refused on MLX
    plain_head: bool = False           # a decoder `.model` + output head: the loss sends only target rows through the head
    rope_per_layer_type: bool = False  # rope_parameters nested by layer type (Gemma 3), else one flat entry
    mlx_layer_types: bool = False      # mlx-lm reads transformers' layer_types for this family
    embedding_scale: bool = False      # embeddings × sqrt(hidden_size) (the Gemmas)
    mlx_scale_bfloat16: bool = False   # ... which mlx-lm rounds to bfloat16, transformers does not (Gemma 3)
    mlx_reader_rewrite: bool = False   # `merge --reader mlx-lm` can pre-scale the embeddings for plain mlx-lm
    norm_offset: float = 0.0           # RMSNorm scales by (offset + w): GGUF stores offset + w (llama.cpp scales by w)
    sentencepiece: bool = False        # tokenizer.model (SentencePiece) rather than byte-level BPE
    gguf_arch: str | None = None       # llama.cpp's architecture; None: export-gguf refuses the family
    hf_architectures: tuple[str, ...] = ()  # transformers classes export-gguf writes as gguf_arch
    gguf_permute_qk: bool = False      # llama.cpp's interleaved rotary: q/k rows permuted (LlamaModel.permute)


_LLAMA_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "rms_norm_eps",
               "vocab_size", "head_dim", "max_position_embeddings", "num_key_value_heads", "attention_bias",
               "mlp_bias", "tie_word_embeddings")
_GEMMA3 = dict(shared_keys=("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "head_dim",
                            "rms_norm_eps", "vocab_size", "num_key_value_heads", "query_pre_attn_scalar",
                            "sliding_window", "max_position_embeddings"),
               checks=(_gemma3_layers_and_rope, _gemma3_body), rope_per_layer_type=True, embedding_scale=True,
               mlx_scale_bfloat16=True, norm_offset=1.0, sentencepiece=True, gguf_arch="gemma3")
FAMILIES = {f.model_type: f for f in (
    Family("llama", proven="llama (incl. llama3 rope scaling)", shared_keys=_LLAMA_KEYS,
           checks=(_rope_mlx_computes, _a_full_layer, _silu), plain_head=True, mlx_layer_types=True,
           gguf_arch="llama", hf_architectures=("LlamaForCausalLM",), gguf_permute_qk=True),
    Family("qwen2", proven="qwen2 (qkv bias, tied embeddings)",
           shared_keys=("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                        "rms_norm_eps", "vocab_size", "num_key_value_heads", "max_position_embeddings",
                        "tie_word_embeddings"),
           checks=(_rope_mlx_computes, _no_sliding_window, _derived_head_dim, _silu), plain_head=True,
           gguf_arch="qwen2", hf_architectures=("Qwen2ForCausalLM",)),
    Family("gemma3_text", proven="Gemma 3 text (sliding window, per-layer-type rope, linear scaling, embedding "
                                 "scale)", plain_head=True, mlx_reader_rewrite=True,
           hf_architectures=("Gemma3ForCausalLM",), **_GEMMA3),
    Family("gemma3", hf_architectures=("Gemma3ForConditionalGeneration",), **_GEMMA3),  # multimodal: text model inside
    *(Family(kind, embedding_scale=True, sentencepiece=True)   # other Gemmas: loaded, no quirk aligned
      for kind in ("gemma", "gemma2", "gemma3n", "gemma3n_text", "gemma4", "gemma4_text", "recurrent_gemma")),
    Family("mistral", plain_head=True),
    Family("qwen3", proven="qwen3 (q_norm/k_norm, head_dim 128 != hidden/heads, tied embeddings)",
           shared_keys=("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "head_dim",
                        "rms_norm_eps", "vocab_size", "num_key_value_heads", "max_position_embeddings",
                        "tie_word_embeddings"),
           checks=(_rope_mlx_computes, _no_sliding_window, _no_attention_bias, _silu), plain_head=True),
    Family("phi3", plain_head=True),
)}
# model_type -> what the tests prove equal on both backends (tests/test_families.py)
VERIFIED = {k: f.proven for k, f in FAMILIES.items() if f.proven}


def family(model_type: str | None) -> Family:
    """The record of `model_type`; an unknown one gets the defaults (flat rope, no quirk, no GGUF)."""
    return FAMILIES.get(model_type) or Family(str(model_type))


def family_of_architecture(hf_arch: str) -> Family | None:
    """The family whose transformers class is `hf_arch` (config.json's `architectures`), if GGUF export knows it."""
    return next((f for f in FAMILIES.values() if hf_arch in f.hf_architectures), None)


def parsed_config(model_dir: Path) -> dict:
    """config.json as transformers reads it (the text model's config for multimodal checkpoints)."""
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(str(model_dir))
    return cfg.get_text_config().to_dict()


def _scaling(rp: dict) -> dict | None:
    """A rope_parameters entry as mlx-lm's `rope_scaling` (None when unscaled): the entry itself,
    which transformers also reads back as the same rope_parameters."""
    kind = rp.get("rope_type") or rp.get("type") or "default"
    return None if kind == "default" else dict(rp)


def gemma3_pattern(layer_types: list[str]) -> int | None:
    """mlx-lm's `sliding_window_pattern` P (layer i is full attention iff (i + 1) % P == 0) that
    reproduces `layer_types`, or None when no P does."""
    n = len(layer_types)
    for p in range(1, n + 1):
        if ["full_attention" if (i + 1) % p == 0 else "sliding_attention" for i in range(n)] == list(layer_types):
            return p
    return None


def mlx_keys(text: dict) -> dict:
    """The top-level keys mlx-lm reads for this (transformers-parsed) text config."""
    fam = family(text.get("model_type"))
    out = {k: text[k] for k in fam.shared_keys if text.get(k) is not None}
    rp = text.get("rope_parameters") or {}
    if fam.rope_per_layer_type:
        full, local = rp.get("full_attention") or {}, rp.get("sliding_attention") or {}
        out["rope_theta"] = full.get("rope_theta", text.get("rope_theta"))
        out["rope_local_base_freq"] = local.get("rope_theta", text.get("rope_local_base_freq"))
        out["rope_scaling"] = _scaling(full)
        pattern = gemma3_pattern(text.get("layer_types") or [])
        if pattern is not None:
            out["sliding_window_pattern"] = pattern
    elif rp:
        if "rope_theta" in rp:
            out["rope_theta"] = rp["rope_theta"]
        out["rope_scaling"] = _scaling(rp)
    if fam.mlx_layer_types and text.get("layer_types"):
        out["layer_types"] = list(text["layer_types"])
    return {k: v for k, v in out.items() if v is not None or k == "rope_scaling"}


def problems(text: dict) -> list[str]:
    """Settings of this config that mlx-lm would ignore or read differently from transformers."""
    return [p for check in family(text.get("model_type")).checks for p in check(text)]


def family_report(model_dir: Path) -> dict:
    """What parity and the loaders need to know about a model directory."""
    text = parsed_config(model_dir)
    kind = text.get("model_type")
    return {"model_type": kind, "verified": kind in VERIFIED, "problems": problems(text),
            "mlx_keys": mlx_keys(text), "text": text}


def write_mlx_keys(cfg: dict, keys: dict) -> dict:
    """`cfg` (a raw config.json dict) with `keys` written at the top level, or into `text_config`
    for a multimodal checkpoint (mlx-lm reads the language model's keys there)."""
    out = dict(cfg)
    if isinstance(out.get("text_config"), dict):
        out["text_config"] = {**out["text_config"], **keys}
    else:
        out.update(keys)
    return out


def read_raw(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())
