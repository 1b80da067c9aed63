"""Tiny random models with the real config values of the seed models (one row per family:
docs/adding-a-family.md), smaller widths and depths: Qwen2.5-3B (qkv bias, tied embeddings, rope θ 1e6, 16:2 heads), Llama-3.2-1B (llama3 rope
scaling factor 32, θ 5e5, original 8192 positions), Gemma-3-4B text (head_dim 256 and
query_pre_attn_scalar 256, 5 sliding + 1 full layers, full layers θ 1e6 with linear ×8, sliding θ
1e4, sliding window 8 here so the test sequences cross it, hidden 96 so sqrt(hidden) is not a
bfloat16 number and the embedding-scale choice shows), Qwen3-0.6B (q/k norms, head_dim 128 with
hidden 1024 and 16 heads). Every weight, norms included, is random."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class Seed(NamedTuple):
    """One row: the family (common/models/families.py), the config values, and whether plain mlx-lm (no
    twinlora keys) reads config.json as another model (what the tests check twinlora corrects)."""
    kind: str
    config: dict
    plain_mlx_lm_differs: bool = False


QWEN25_3B = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=16,
                 num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
                 use_sliding_window=False, sliding_window=32768, max_window_layers=70, hidden_act="silu",
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
LLAMA32_1B = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=131072, rms_norm_eps=1e-5,
                  tie_word_embeddings=True, hidden_act="silu",
                  rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 8192})
GEMMA3_4B = dict(hidden_size=96, intermediate_size=192, num_hidden_layers=6, num_attention_heads=8,
                 num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=8,
                 max_position_embeddings=131072, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
                 final_logit_softcapping=None, attn_logit_softcapping=None, tie_word_embeddings=True,
                 layer_types=["sliding_attention"] * 5 + ["full_attention"],
                 rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
# Qwen3-0.6B (Qwen/Qwen3-0.6B's config.json): q_norm/k_norm, head_dim 128 != hidden/heads, 16:8 heads, θ 1e6
QWEN3_06B = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
                 tie_word_embeddings=True, attention_bias=False, use_sliding_window=False, sliding_window=None,
                 max_window_layers=28, hidden_act="silu", rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
SEEDS = {"qwen2.5-3b": Seed("qwen2", QWEN25_3B),
         "llama-3.2-1b": Seed("llama", LLAMA32_1B, plain_mlx_lm_differs=True),      # llama3 scaling nested
         "gemma-3-4b": Seed("gemma3_text", GEMMA3_4B, plain_mlx_lm_differs=True),  # nested rope, embedding scale
         "qwen3-0.6b": Seed("qwen3", QWEN3_06B)}


def build_seed(name: str, out: Path, seed: int = 0) -> Path:
    """Write the tiny `name` model in transformers' own save format (rope settings only inside
    rope_parameters, as a hub checkpoint saved by transformers 5 has them) with a tokenizer:
    Gemma-style SentencePiece + Gemma turns for a SentencePiece family (common/models/families.py),
    byte-level BPE + ChatML for the others."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GemmaTokenizer

    from common.models.families import family
    from tiny_model import build_tokenizer

    kind, values = SEEDS[name].kind, SEEDS[name].config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if family(kind).sentencepiece:
        from test_gguf_gemma3 import CHAT, build_spm
        build_spm(out)
        tok = GemmaTokenizer.from_pretrained(str(out), add_bos_token=True)
        tok.chat_template = CHAT
        tok.save_pretrained(str(out))
    else:
        tok = build_tokenizer(out)
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    cfg = AutoConfig.for_model(kind, **values, **ids)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08 if p.dim() == 2 else 0.3)
    model.save_pretrained(str(out), safe_serialization=True)
    return out
