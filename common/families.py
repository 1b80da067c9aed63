"""One config.json, one model: what mlx-lm must read so it builds the model transformers builds.

transformers 5 parses config.json (legacy keys, defaults, `rope_parameters` flat or nested per
layer type, `layer_types`) into one config; mlx-lm reads config.json raw, with its own defaults
(`rope_theta` 10000 for llama, top-level `rope_scaling`, Gemma 3's `rope_local_base_freq` and
`sliding_window_pattern`, qwen2's `tie_word_embeddings` True...). So the source of truth is
transformers' parsed config, and `mlx_keys` turns it into the flat keys mlx-lm reads, written next
to `rope_parameters` in every config.json we write and passed as overrides when the MLX backend
loads any directory.

`problems` lists the settings one side would silently ignore (attention softcapping, a qwen2
sliding window, a rope scaling type mlx-lm lacks, a Gemma layer pattern mlx-lm cannot express):
such a model is refused rather than trained differently on the two backends. Families other than
those in VERIFIED load, but parity has not been proven for them: `parity` says so.

Pure functions over dicts; `parsed_config` imports transformers' config classes only (no torch).
"""
from __future__ import annotations

import json
from pathlib import Path

# model_type -> what the tests prove equal on both backends (tests/test_families.py)
VERIFIED = {"llama": "llama (incl. llama3 rope scaling)", "qwen2": "qwen2 (qkv bias, tied embeddings)",
            "gemma3_text": "Gemma 3 text (sliding window, per-layer-type rope, linear scaling, embedding scale)"}
# rope types mlx-lm's initialize_rope computes as transformers does (checked by the tests for these)
MLX_ROPE = {"default", "linear", "llama3"}
# keys both sides read identically when present (copied from transformers' parsed config)
_SHARED = {
    "llama": ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "rms_norm_eps",
              "vocab_size", "head_dim", "max_position_embeddings", "num_key_value_heads", "attention_bias",
              "mlp_bias", "tie_word_embeddings"),
    "qwen2": ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "rms_norm_eps",
              "vocab_size", "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings"),
    "gemma3_text": ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "head_dim",
                    "rms_norm_eps", "vocab_size", "num_key_value_heads", "query_pre_attn_scalar", "sliding_window",
                    "max_position_embeddings"),
}


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
    kind = text.get("model_type")
    out = {k: text[k] for k in _SHARED.get(kind, ()) if text.get(k) is not None}
    rp = text.get("rope_parameters") or {}
    if kind == "gemma3_text":
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
    if kind == "llama" and text.get("layer_types"):
        out["layer_types"] = list(text["layer_types"])
    return {k: v for k, v in out.items() if v is not None or k == "rope_scaling"}


def problems(text: dict) -> list[str]:
    """Settings of this config that mlx-lm would ignore or read differently from transformers."""
    kind = text.get("model_type")
    rp = text.get("rope_parameters") or {}
    out = []
    if kind == "gemma3_text":
        full, local = rp.get("full_attention") or {}, rp.get("sliding_attention") or {}
        layer_types = text.get("layer_types") or []
        pattern = gemma3_pattern(layer_types)
        if pattern is None or pattern > len(layer_types):
            out.append("layer_types is not 'every P-th layer full attention, the rest sliding' with at least one "
                       "full layer, the only pattern mlx-lm's gemma3_text builds")
        if (local.get("rope_type") or "default") != "default":
            out.append(f"the sliding layers' rope is scaled ({local.get('rope_type')}); mlx-lm scales only the "
                       "full-attention layers")
        if (full.get("rope_type") or "default") not in MLX_ROPE:
            out.append(f"rope type {full.get('rope_type')!r} (mlx-lm computes {', '.join(sorted(MLX_ROPE))} "
                       "as transformers does)")
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if text.get(key):
                out.append(f"{key}={text[key]} (mlx-lm's gemma3_text has no softcapping)")
        if text.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
            out.append(f"hidden_activation {text['hidden_activation']!r} (mlx-lm's gemma3_text uses gelu-tanh)")
        if text.get("attention_bias"):
            out.append("attention_bias (mlx-lm's gemma3_text has no attention biases)")
        if text.get("use_bidirectional_attention"):
            out.append("use_bidirectional_attention (mlx-lm's gemma3_text is causal)")
    elif kind in ("llama", "qwen2"):
        if rp and (rp.get("rope_type") or "default") not in MLX_ROPE:
            out.append(f"rope type {rp.get('rope_type')!r} (mlx-lm computes {', '.join(sorted(MLX_ROPE))} "
                       "as transformers does)")
        if kind == "qwen2" and text.get("use_sliding_window"):
            out.append("use_sliding_window (mlx-lm's qwen2 attends to the whole sequence)")
        head_dim = text.get("head_dim")
        if kind == "qwen2" and head_dim and head_dim != text["hidden_size"] // text["num_attention_heads"]:
            out.append(f"head_dim {head_dim} != hidden_size / num_attention_heads (mlx-lm's qwen2 derives it)")
        if kind == "llama" and (text.get("layer_types") or []) and "full_attention" not in text["layer_types"]:
            out.append("no full_attention layer in layer_types (mlx-lm's llama needs one)")
        if text.get("hidden_act", "silu") != "silu":
            out.append(f"hidden_act {text['hidden_act']!r} (mlx-lm's {kind} uses silu)")
    return out


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
