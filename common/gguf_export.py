"""`export-gguf`: write a (merged) Hugging Face model directory as one GGUF file for llama.cpp.

Supported architectures: llama (LlamaForCausalLM, e.g. SmolLM2, Llama 3 without rope scaling) and
qwen2 (Qwen2ForCausalLM), with a byte-level BPE tokenizer (llama.cpp's "gpt2" tokenizer model).
Tensors are f32 or f16 (1-D tensors such as norms and biases stay f32, as llama.cpp's converter
does); no quantization here (llama.cpp's `llama-quantize` does that from the f16/f32 file).

What follows llama.cpp's convert_hf_to_gguf.py exactly, because llama.cpp and transformers' GGUF
loader both rely on it:
- tensor names from gguf-py's own name map (token_embd, blk.N.attn_q, ..., output_norm, output);
  no `output` tensor when the embeddings are tied;
- for llama, the q and k projections are permuted (`LlamaModel.permute`): llama.cpp applies rotary
  embeddings to interleaved pairs, HF to the two halves of each head; transformers' loader
  reverses it (LlamaTensorProcessor). qwen2 is not permuted (llama.cpp uses NEOX rope there);
- the vocabulary: every id below vocab_size, added tokens typed CONTROL (special) or USER_DEFINED,
  holes as "[PAD<id>]" UNUSED; merges, special ids, add_bos/eos and the chat template come from
  gguf-py's SpecialVocab reading the tokenizer files;
- `tokenizer.ggml.pre` names the pre-tokenizer regex; only ones recognised from tokenizer.json are
  written (a wrong one would silently change tokenization), anything else is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.errors import ModelError, UserError
from common.io import atomic_path

ARCHS = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
DTYPES = ("f32", "f16")


def export_gguf(model_dir: Path, out_file: Path, dtype: str = "f32") -> Path:
    """Write `model_dir` (config.json + *.safetensors + tokenizer) as the GGUF file `out_file`
    (atomically) with tensors in `dtype` ("f32" or "f16"). Returns `out_file`."""
    try:
        import gguf
    except ImportError as exc:
        raise UserError("GGUF export needs the gguf package", fix="pip install gguf") from exc

    model_dir, out_file = Path(model_dir), Path(out_file)
    if dtype not in DTYPES:
        raise UserError(f"GGUF dtype {dtype!r} is not supported", where="--dtype", fix="use f32 or f16")
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ModelError("no config.json here", where=str(model_dir), fix="pass a merged model directory (cli.py merge)")
    cfg = json.loads(cfg_path.read_text())
    hf_arch = (cfg.get("architectures") or ["?"])[0]
    if hf_arch not in ARCHS:
        raise ModelError(f"GGUF export supports {', '.join(sorted(ARCHS))}, not {hf_arch}", where=str(cfg_path),
                         fix="use llama.cpp's convert_hf_to_gguf.py for this architecture")
    arch = ARCHS[hf_arch]
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if (rope.get("rope_type") or rope.get("type") or "default") != "default":
        raise ModelError(f"rope scaling {rope.get('rope_type') or rope.get('type')!r} is not supported by this exporter",
                         where=str(cfg_path), fix="use llama.cpp's convert_hf_to_gguf.py for this model")
    rope_theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    n_head, n_kv = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    hidden, n_layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    head_dim = int(cfg.get("head_dim") or hidden // n_head)

    tensors = _read_tensors(model_dir)
    tokens, toktypes, tokpre = _vocab(model_dir, int(cfg["vocab_size"]))

    gg_arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[arch]
    names = gguf.get_tensor_name_map(gg_arch, n_layers)
    with atomic_path(out_file) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_name(cfg.get("_name_or_path") or model_dir.name)
        w.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
        w.add_embedding_length(hidden)
        w.add_block_count(n_layers)
        w.add_feed_forward_length(int(cfg["intermediate_size"]))
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_rope_freq_base(rope_theta)
        w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
        w.add_vocab_size(int(cfg["vocab_size"]))
        if arch == "llama":
            w.add_rope_dimension_count(head_dim)
        if head_dim != hidden // n_head:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)

        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tokpre)
        w.add_token_list(tokens)
        w.add_token_types(toktypes)
        special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
        if not special.merges:
            raise ModelError("the tokenizer has no BPE merges", where=str(model_dir),
                             fix="GGUF export needs a byte-level BPE tokenizer (tokenizer.json with merges)")
        special.add_to_gguf(w, quiet=True)

        tied = bool(cfg.get("tie_word_embeddings", False))
        for name in sorted(tensors, key=_order):
            if name == "lm_head.weight" and tied:
                continue
            data = tensors[name]
            if arch == "llama" and name.endswith("self_attn.q_proj.weight"):
                data = permute(data, n_head, n_head)
            elif arch == "llama" and name.endswith("self_attn.k_proj.weight"):
                data = permute(data, n_head, n_kv)
            new = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise ModelError(f"tensor {name} has no GGUF name for {arch}", where=str(model_dir),
                                 fix="use llama.cpp's convert_hf_to_gguf.py for this model")
            if dtype == "f16" and data.ndim > 1:
                data = data.astype(np.float16)
            w.add_tensor(new, np.ascontiguousarray(data))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out_file


def permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py): HF half-split rotary layout →
    llama.cpp's interleaved pairs, per head."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _order(name: str):
    """Embeddings first, then blocks in order, then the final norm and head (llama.cpp's order)."""
    import re
    m = re.search(r"layers\.(\d+)\.", name)
    return (1, int(m.group(1)), name) if m else ((0, 0, name) if "embed" in name else (2, 0, name))


def _read_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of the model's safetensors files as float32 numpy (bf16 read through torch)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelError("no *.safetensors weights", where=str(model_dir), fix="pass a merged model directory")
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                out[k] = fh.get_tensor(k).float().numpy()
    return out


def _vocab(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int], str]:
    """Tokens, token types and the pre-tokenizer name, as llama.cpp's `get_vocab_base` writes them."""
    import gguf
    from transformers import AutoTokenizer

    tok_json = model_dir / "tokenizer.json"
    if not tok_json.is_file():
        raise ModelError("no tokenizer.json", where=str(model_dir), fix="save the tokenizer beside the weights")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    # The tokenizer as transformers runs it: transformers 5 lets a model's tokenizer class (e.g.
    # Qwen2Tokenizer) impose its own pre-tokenizer over the one in tokenizer.json.
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if (spec.get("model") or {}).get("type") != "BPE":
        raise ModelError("GGUF export supports byte-level BPE tokenizers only", where=str(tok_json),
                         fix="use llama.cpp's convert_hf_to_gguf.py for this tokenizer")
    tokpre = _pre_tokenizer_name(spec.get("pre_tokenizer"), str(tok_json))
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        t = reverse[i]
        if t in added:
            types.append(gguf.TokenType.CONTROL if decoder[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(t)
    return tokens, [int(t) for t in types], tokpre


def _pre_tokenizer_name(pre: dict | None, where: str) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer regex (gpt-2, llama-bpe, qwen2)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "gpt-2"
    if pre and pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        splits = [p for p in parts if p.get("type") == "Split"]
        rest = [p for p in parts if p.get("type") != "Split"]
        if (len(splits) == 1 and len(rest) == 1 and rest[0].get("type") == "ByteLevel"
                and not rest[0].get("use_regex", True)):
            regex = (splits[0].get("pattern") or {}).get("Regex")
            for name in ("llama-bpe", "qwen2"):
                if regex == GGUF_PRE_TOKENIZER_SPLITS[name]:
                    return name
    raise ModelError("the tokenizer's pre-tokenizer is not one this exporter can name for llama.cpp "
                     "(GPT-2, Llama-3 or Qwen2 regex)", where=where,
                     fix="use llama.cpp's convert_hf_to_gguf.py, which identifies more tokenizers")
