"""`export-gguf`: write a (merged) Hugging Face model directory as one GGUF file for llama.cpp.

Supported architectures: llama (LlamaForCausalLM, e.g. SmolLM2, Llama 3.x with its llama3 rope
scaling written as llama.cpp's `rope_freqs` tensor) and
qwen2 (Qwen2ForCausalLM) with a byte-level BPE tokenizer (llama.cpp's "gpt2" tokenizer model), and
gemma3 (Gemma3ForCausalLM; and Gemma3ForConditionalGeneration, the 4B+ multimodal checkpoints, of
which the language model only is written, as llama.cpp's converter does: the vision tower and its
projector belong in llama.cpp's separate mmproj file) with its SentencePiece tokenizer.model
(llama.cpp's "llama" tokenizer model: pieces, scores and token types).
Tensors are f32, f16, bf16 or q8_0 (llama.cpp's converter's `--outtype`s, quantized by gguf-py's own
`gguf.quants`): 1-D tensors and non-`.weight` tensors stay f32, and a q8_0 tensor whose rows are not
a multiple of the 32-value block falls back to f16, as llama.cpp's converter does. Lower types are
llama.cpp's `llama-quantize`'s job, from the f16/f32 file.

Metadata as convert_hf_to_gguf.py writes it: general.type, gguf-py's `Metadata` (name, basename,
finetune, size label from the parameter count, license... from the model card and config),
general.quantization_version, attention.key_length/value_length whenever config.json has head_dim,
and `tokenizer.ggml.pre` named as llama.cpp names it: by the sha256 of the token ids of llama.cpp's
probe text (`get_vocab_base_pre`; e.g. SmolLM2's tokenizer is 'smollm', whose pre-tokenizer splits
digits), falling back to the pre-tokenizer's structure for tokenizers llama.cpp has no hash for.
add_bos_token is what the tokenizer does when tokenizer_config.json does not say.

What follows llama.cpp's convert_hf_to_gguf.py exactly, because llama.cpp and transformers' GGUF
loader both rely on it:
- tensor names from gguf-py's own name map (token_embd, blk.N.attn_q, ..., output_norm, output);
  no `output` tensor when the embeddings are tied;
- for llama, the q and k projections are permuted (`LlamaModel.permute`): llama.cpp applies rotary
  embeddings to interleaved pairs, HF to the two halves of each head; transformers' loader
  reverses it (LlamaTensorProcessor). qwen2 and gemma3 are not permuted (NEOX rope there);
- the BPE vocabulary: every id below vocab_size, added tokens typed CONTROL (special) or USER_DEFINED,
  holes as "[PAD<id>]" UNUSED; merges, special ids, add_bos/eos and the chat template come from
  gguf-py's SpecialVocab reading the tokenizer files;
- `tokenizer.ggml.pre` names the pre-tokenizer regex; only ones recognised from tokenizer.json are
  written (a wrong one would silently change tokenization), anything else is refused;
- llama3 rope scaling (Llama 3.1/3.2) as `LlamaModel.generate_extra_tensors` writes it: a f32
  `rope_freqs.weight` tensor of head_dim/2 per-frequency divisors (1 for short wavelengths,
  `factor` for long ones, smoothed in between), which llama.cpp's rope divides each frequency by.
  transformers' GGUF loader ignores that tensor (it reads the model unscaled): a note says so.

Gemma 3 (`Gemma3Model` in convert_hf_to_gguf.py, as transformers' GGUF loader reads it back):
- every RMSNorm weight (input, post-attention, pre- and post-feedforward, q_norm, k_norm and the
  final norm) is written as 1 + w: Gemma3RMSNorm scales by (1 + w), llama.cpp by w, and the loader
  subtracts 1 from every `*norm.weight` (Gemma2TensorProcessor). The sum is taken in f32;
- head_dim as attention.key_length/value_length, sliding_window, and the global layers' rope base
  as rope.freq_base; the vocabulary is tokenizer.model's pieces with their scores and types, then
  the tokenizer's added tokens over them (CONTROL if special, else USER_DEFINED with "▁" as
  spaces, score -1000), holes "[PAD<id>]"; add_space_prefix false; add_bos/add_eos set to what the
  model's own tokenizer does (Gemma adds BOS); ids and chat template from SpecialVocab;
- llama.cpp stores no key for the rest and hard-codes Gemma 3's values, as transformers' loader
  takes its config defaults: every 6th layer full attention, the others sliding; the sliding
  layers' rope unscaled at base 10000 (rope_local_base_freq); gelu-tanh; no attention bias, no
  attention softcapping. A model that differs is refused (one ModelError listing every setting),
  as are final_logit_softcapping (the loader ignores it) and a query_pre_attn_scalar other than
  the one llama.cpp derives (head_dim; hidden/heads for the 62-layer 27B);
- written for llama.cpp, with a note that transformers' GGUF loader does not honour them (so
  `from_pretrained(gguf_file=...)` then differs; load the safetensors directory there instead):
  linear rope scaling of the global layers (Gemma-3-4B/12B/27B: factor 8; llama.cpp applies it to
  the global layers only, the loader drops it), and a query_pre_attn_scalar other than 256 (the
  27B's 168: llama.cpp derives it, the loader uses its default 256). Any other rope scaling is refused.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from common.errors import ModelError, UserError
from common.models.families import FAMILIES, family_of_architecture
from common.runs.io import atomic_path

# transformers class -> llama.cpp architecture, from the family records (common/models/families.py)
ARCHS = {a: f.gguf_arch for f in FAMILIES.values() if f.gguf_arch for a in f.hf_architectures}
DTYPES = ("f32", "f16", "bf16", "q8_0")
# Tensors of Gemma 3's vision tower and projector: llama.cpp writes them to a separate mmproj file.
VISION = ("vision_tower.", "multi_modal_projector.", "multimodal_projector.", "vision_model.")
# Text on which tokenizer.model and the model's own tokenizer must give the same ids.
PROBE = "Le salarié a droit à un congé payé (article L3141-1, 2024) : ça coûte 12,50 € ! 🎉\nÜber Straße"


def export_gguf(model_dir: Path, out_file: Path, dtype: str = "f32",
                echo: Callable[[str], None] | None = None) -> Path:
    """Write `model_dir` (config.json + *.safetensors + tokenizer) as the GGUF file `out_file`
    (atomically) with tensors in `dtype` ("f32" or "f16"). Returns `out_file`. `echo` gets the notes
    (what was left out, what transformers' GGUF loader will not honour); warnings.warn without it."""
    try:
        import gguf
    except ImportError as exc:
        raise UserError("GGUF export needs the gguf package", fix="pip install gguf") from exc

    model_dir, out_file = Path(model_dir), Path(out_file)
    note = echo or (lambda msg: warnings.warn(msg, stacklevel=3))
    if dtype not in DTYPES:
        raise UserError(f"GGUF dtype {dtype!r} is not supported", where="--dtype", fix="use f32, f16, bf16 or q8_0")
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ModelError("no config.json here", where=str(model_dir), fix="pass a merged model directory (cli.py merge)")
    cfg = json.loads(cfg_path.read_text())
    hf_arch = (cfg.get("architectures") or ["?"])[0]
    if hf_arch not in ARCHS:
        raise ModelError(f"GGUF export supports {', '.join(sorted(ARCHS))}, not {hf_arch}", where=str(cfg_path),
                         fix="use llama.cpp's convert_hf_to_gguf.py for this architecture")
    fam = family_of_architecture(hf_arch)
    arch = fam.gguf_arch
    read = _gemma3_parts if arch == "gemma3" else _llama_parts
    keys, n_layers, tied, (vocab, add_vocab), tensors, extra = read(fam, hf_arch, model_dir, cfg, note)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layers)
    written = [n for n in sorted(tensors, key=_order) if not (n == "lm_head.weight" and tied)]
    with atomic_path(out_file) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_type(gguf.GGUFType.MODEL)
        _model_metadata(w, model_dir, cfg, sum(int(tensors[n].size) for n in written))
        for method, value in keys:
            getattr(w, method)(value)
        w.add_file_type(FILE_TYPES[dtype]())
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

        add_vocab(w, model_dir, *vocab)
        if extra is not None:   # llama.cpp writes its generated tensors first
            w.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", extra, raw_dtype=gguf.GGMLQuantizationType.F32)
        for name in written:
            data = _permute_qk(name, tensors[name], cfg) if fam.gguf_permute_qk else tensors[name]
            new = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise ModelError(f"tensor {name} has no GGUF name for {arch}", where=str(model_dir),
                                 fix="use llama.cpp's convert_hf_to_gguf.py for this model")
            data, qtype = _encode(np.ascontiguousarray(data, dtype=np.float32), name, dtype)
            w.add_tensor(new, data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out_file


def _gemma3_parts(fam, hf_arch: str, model_dir: Path, cfg: dict, note: Callable[[str], None]) -> tuple:
    """(GGUF keys, layers, tied head, (vocab, its writer), tensors, no extra tensor) of a Gemma 3."""
    text = _gemma3_config(model_dir)
    keys = _gemma3_keys(text, str(model_dir / "config.json"), note)
    vocab = _tokenizer_vocab(fam, model_dir, int(text.vocab_size))
    tensors = _gemma3_tensors(_read_tensors(model_dir, skip=VISION), hf_arch, model_dir, note, fam.norm_offset)
    return keys, int(text.num_hidden_layers), bool(text.tie_word_embeddings), vocab, tensors, None


def _llama_parts(fam, hf_arch: str, model_dir: Path, cfg: dict, note: Callable[[str], None]) -> tuple:
    """(GGUF keys, layers, tied head, (vocab, its writer), tensors, llama3's rope_freqs or None) of a
    llama / qwen2 model."""
    keys = _llama_keys(cfg, fam.gguf_arch, str(model_dir / "config.json"))
    vocab = _tokenizer_vocab(fam, model_dir, int(cfg["vocab_size"]))
    tensors = _read_tensors(model_dir)
    extra = _llama3_rope_freqs(cfg)
    if extra is not None:
        note("llama3 rope scaling is written as llama.cpp's rope_freqs tensor; transformers' GGUF loader "
             "ignores it (from_pretrained(gguf_file=...) reads the model unscaled: load the safetensors "
             "directory there instead)")
    return keys, int(cfg["num_hidden_layers"]), bool(cfg.get("tie_word_embeddings", False)), vocab, tensors, extra


def _tokenizer_vocab(fam, model_dir: Path, vocab_size: int) -> tuple[tuple, Callable]:
    """The vocabulary as llama.cpp writes it and the function that writes it: SentencePiece pieces
    for a tokenizer.model family, byte-level BPE tokens otherwise."""
    if fam.sentencepiece:
        return _spm_vocab(model_dir, vocab_size), _add_spm_vocab
    return _vocab(model_dir, vocab_size), _add_bpe_vocab


def _file_types():
    import gguf
    T = gguf.LlamaFileType
    return {"f32": lambda: T.ALL_F32, "f16": lambda: T.MOSTLY_F16, "bf16": lambda: T.MOSTLY_BF16,
            "q8_0": lambda: T.MOSTLY_Q8_0}


FILE_TYPES = _file_types()


def _encode(data: np.ndarray, name: str, dtype: str):
    """(bytes or array, GGML type) of one tensor, by llama.cpp's rules: 1-D and non-.weight tensors
    in f32; q8_0 falls back to f16 where the rows do not split into 32-value blocks."""
    import gguf
    Q = gguf.GGMLQuantizationType
    if data.ndim <= 1 or not name.endswith(".weight") or dtype == "f32":
        return data, Q.F32
    qtype = {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[dtype]
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        return gguf.quants.quantize(data, Q.F16), Q.F16


def _model_metadata(w, model_dir: Path, cfg: dict, n_params: int) -> None:
    """general.* as llama.cpp's `prepare_metadata`: gguf-py's Metadata from the model card and
    config, the directory name when nothing names the model, the size label from the parameter count."""
    import gguf
    meta = gguf.Metadata.load(None, model_dir, None, n_params)
    if meta.name is None:
        meta.name = model_dir.name
    if meta.size_label is None and n_params > 0:
        meta.size_label = gguf.size_label(n_params, 0, 0, 0)
    meta.set_gguf_meta_model(w)


def _llama_keys(cfg: dict, arch: str, where: str) -> list[tuple[str, object]]:
    """The GGUFWriter calls for llama / qwen2 hyper-parameters (llama.cpp's TextModel + LlamaModel)."""
    rope = _rope(cfg)
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind != "default" and not (kind == "llama3" and arch == "llama"):
        raise ModelError(f"rope scaling {kind!r} is not supported by this exporter for {arch}",
                         where=where, fix="use llama.cpp's convert_hf_to_gguf.py for this model")
    n_head, n_kv = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_head)
    keys = [("add_context_length", int(cfg.get("max_position_embeddings", 2048))),
            ("add_embedding_length", hidden),
            ("add_block_count", int(cfg["num_hidden_layers"])),
            ("add_feed_forward_length", int(cfg["intermediate_size"])),
            ("add_head_count", n_head),
            ("add_head_count_kv", n_kv),
            ("add_rope_freq_base", float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))),
            ("add_layer_norm_rms_eps", float(cfg.get("rms_norm_eps", 1e-6))),
            ("add_vocab_size", int(cfg["vocab_size"]))]
    if arch == "llama":
        keys.append(("add_rope_dimension_count", head_dim))
    if cfg.get("head_dim") or head_dim != hidden // n_head:  # llama.cpp: whenever config.json has head_dim
        keys += [("add_key_length", head_dim), ("add_value_length", head_dim)]
    return keys


def _rope(cfg: dict) -> dict:
    return cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}


def _llama3_rope_freqs(cfg: dict) -> np.ndarray | None:
    """llama.cpp's `rope_freqs` for llama3 rope scaling (convert_hf_to_gguf.py, LlamaModel.
    generate_extra_tensors): per frequency of the unscaled rope, the divisor llama.cpp applies.
    None for a model without llama3 scaling."""
    import math
    rope = _rope(cfg)
    if (rope.get("rope_type") or rope.get("type")) != "llama3":
        return None
    base = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // int(cfg["num_attention_heads"]))
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_len = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_len / low, old_len / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / float(freq)
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


# ------------------------------------------------------------------ Gemma 3

def _gemma3_config(model_dir: Path):
    """The text model's config as transformers fills it: the 4B+ checkpoints' config.json leaves most
    of text_config to the defaults, and old keys (rope_scaling, rope_local_base_freq,
    sliding_window_pattern) become rope_parameters / layer_types there."""
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(str(model_dir)).get_text_config()


def _gemma3_layer_types(n_layers: int) -> list[str]:
    """Gemma 3's attention pattern, hard-coded in llama.cpp (swa pattern 6) and transformers' default."""
    return ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)]


def _llamacpp_query_scalar(text) -> int:
    """The query_pre_attn_scalar llama.cpp assumes, having no key for it: head_dim, except
    hidden/heads for the 62-layer Gemma-3-27B (llama-model.cpp)."""
    if int(text.num_hidden_layers) == 62:
        return int(text.hidden_size) // int(text.num_attention_heads)
    return int(text.head_dim)


def _gemma3_problems(text) -> list[str]:
    """Settings llama.cpp or transformers' GGUF loader would silently replace by Gemma 3's standard ones."""
    rope = text.rope_parameters or {}
    local, full = rope.get("sliding_attention") or {}, rope.get("full_attention") or {}
    problems = []
    if list(text.layer_types) != _gemma3_layer_types(int(text.num_hidden_layers)):
        problems.append("layer_types is not every 6th layer full attention and the rest sliding, the pattern "
                        "llama.cpp and transformers' GGUF loader both assume")
    if not text.sliding_window:
        problems.append("no sliding_window")
    if (local.get("rope_type") or "default") != "default" or float(local.get("rope_theta", 10000.0)) != 10000.0:
        problems.append("the sliding layers' rope is not unscaled base 10000 (rope_local_base_freq), the value "
                        "llama.cpp and the loader fix")
    if (full.get("rope_type") or "default") not in ("default", "linear"):
        problems.append(f"rope scaling {full.get('rope_type')!r} (only linear, Gemma-3-4B+'s, is exported)")
    if float(text.query_pre_attn_scalar) != _llamacpp_query_scalar(text):
        problems.append(f"query_pre_attn_scalar {text.query_pre_attn_scalar} is not {_llamacpp_query_scalar(text)}, "
                        "the value llama.cpp derives (head_dim; hidden/heads for 62 layers)")
    if text.final_logit_softcapping:
        problems.append("final_logit_softcapping is set (transformers' GGUF loader ignores it)")
    if text.attn_logit_softcapping:
        problems.append("attn_logit_softcapping is set (llama.cpp's Gemma 3 has none)")
    if text.hidden_activation != "gelu_pytorch_tanh":
        problems.append(f"hidden_activation {text.hidden_activation!r} (llama.cpp uses gelu-tanh)")
    if text.attention_bias:
        problems.append("attention_bias (llama.cpp's Gemma 3 has no attention biases)")
    if getattr(text, "use_bidirectional_attention", False):
        problems.append("use_bidirectional_attention (an EmbeddingGemma, llama.cpp's gemma-embedding architecture)")
    return problems


def _gemma3_keys(text, where: str, note: Callable[[str], None]) -> list[tuple[str, object]]:
    """The GGUFWriter calls of llama.cpp's `Gemma3Model.set_gguf_parameters`, after refusing what
    the file cannot carry and noting what transformers' GGUF loader will not honour."""
    import gguf

    problems = _gemma3_problems(text)
    if problems:
        raise ModelError("this Gemma 3 cannot be written as GGUF: " + "; ".join(problems), where=where,
                         fix="GGUF holds only Gemma 3's standard settings; "
                             "run this model from its safetensors directory")
    full = (text.rope_parameters or {}).get("full_attention") or {}
    keys = [("add_context_length", int(text.max_position_embeddings)),
            ("add_embedding_length", int(text.hidden_size)),
            ("add_block_count", int(text.num_hidden_layers)),
            ("add_feed_forward_length", int(text.intermediate_size)),
            ("add_head_count", int(text.num_attention_heads)),
            ("add_layer_norm_rms_eps", float(text.rms_norm_eps)),
            ("add_key_length", int(text.head_dim)),
            ("add_value_length", int(text.head_dim)),
            ("add_rope_freq_base", float(full.get("rope_theta", 1_000_000.0))),
            ("add_sliding_window", int(text.sliding_window)),
            ("add_head_count_kv", int(text.num_key_value_heads))]
    if full.get("rope_type") == "linear":
        keys += [("add_rope_scaling_type", gguf.RopeScalingType.LINEAR),
                 ("add_rope_scaling_factor", float(full["factor"]))]
        note(f"linear rope scaling x{full['factor']} of the global layers is written for llama.cpp, but transformers' "
             "GGUF loader ignores it: load the safetensors directory in transformers, not the GGUF")
    if float(text.query_pre_attn_scalar) != 256:
        note(f"query_pre_attn_scalar {text.query_pre_attn_scalar}: llama.cpp derives it, but transformers' GGUF loader "
             "uses 256: load the safetensors directory in transformers, not the GGUF")
    return keys


def _gemma3_tensors(tensors: dict[str, np.ndarray], hf_arch: str, model_dir: Path,
                    note: Callable[[str], None], norm_offset: float) -> dict[str, np.ndarray]:
    """llama.cpp's `Gemma3Model.modify_tensors`: the language model's names without `language_model.`,
    and every RMSNorm weight as offset + w (Gemma3RMSNorm scales by 1 + w, llama.cpp by w)."""
    if hf_arch == "Gemma3ForConditionalGeneration":
        note(f"{model_dir}: the language model only is written; the vision tower and its projector are left out "
             "(llama.cpp keeps them in a separate mmproj file: convert_hf_to_gguf.py --mmproj)")
    out = {}
    for name, data in tensors.items():
        name = name.replace("language_model.", "")
        out[name] = data + np.float32(norm_offset) if name.endswith("norm.weight") else data
    return out


def _spm_vocab(model_dir: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int], dict]:
    """Tokens, scores and types as llama.cpp's `_create_vocab_sentencepiece` writes them, and whether
    the model's tokenizer adds BOS / EOS. The added tokens are the tokenizer's own (what llama.cpp
    reads from tokenizer_config.json, which transformers 5 no longer writes them to)."""
    import gguf
    from sentencepiece import SentencePieceProcessor
    from transformers import AutoTokenizer

    path = model_dir / "tokenizer.model"
    proto = _spm_proto(model_dir, path)
    sp = SentencePieceProcessor(model_proto=proto.SerializeToString())
    if sp.vocab_size() > vocab_size:
        raise ModelError(f"tokenizer.model has {sp.vocab_size()} pieces, more than the model's vocab_size "
                         f"{vocab_size}", where=str(path), fix="use the base model's tokenizer.model")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if sp.encode(PROBE) != tokenizer(PROBE, add_special_tokens=False)["input_ids"]:
        raise ModelError("tokenizer.model and the model's tokenizer (tokenizer.json) give different ids for the "
                         "same text", where=str(path),
                         fix="copy tokenizer.model from the model that tokenizer.json comes from")
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores, types = [-10000.0] * vocab_size, [int(gguf.TokenType.UNUSED)] * vocab_size
    for i in range(sp.vocab_size()):
        tokens[i], scores[i], types[i] = sp.id_to_piece(i).encode(), sp.get_score(i), _spm_type(sp, i)
    for i, added in tokenizer.added_tokens_decoder.items():
        if i >= vocab_size:
            continue
        special = added.special or _looks_special(added.content)
        tokens[i] = (added.content if special else added.content.replace("\u2581", " ")).encode()
        scores[i], types[i] = -1000.0, int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    ids = tokenizer("a")["input_ids"]
    adds = {"bos": bool(ids) and ids[0] == tokenizer.bos_token_id,
            "eos": bool(ids) and ids[-1] == tokenizer.eos_token_id}
    return tokens, scores, types, adds


def _spm_proto(model_dir: Path, path: Path):
    """tokenizer.model parsed, refused unless llama.cpp's SentencePiece tokenizer runs it as Gemma 3's:
    a BPE model, no dummy prefix (llama.cpp writes add_space_prefix false), whitespace kept."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    if not path.is_file():
        raise ModelError("Gemma 3 GGUF export needs the SentencePiece tokenizer.model (llama.cpp writes Gemma's "
                         "vocabulary from it, with its scores); transformers 5 saves only tokenizer.json",
                         where=str(model_dir), fix=_spm_fix(model_dir))
    proto = pb.ModelProto()
    proto.ParseFromString(path.read_bytes())
    problems = []
    if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        problems.append("not a BPE model (Gemma's is; transformers' GGUF loader rebuilds BPE merges)")
    if proto.normalizer_spec.add_dummy_prefix:
        problems.append("add_dummy_prefix is on (llama.cpp writes add_space_prefix false for Gemma 3)")
    if proto.normalizer_spec.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces is on (llama.cpp's SentencePiece tokenizer keeps them)")
    if problems:
        raise ModelError("this tokenizer.model is not a Gemma-style SentencePiece model: " + "; ".join(problems),
                         where=str(path), fix="use the base Gemma 3 model's tokenizer.model")
    return proto


def _spm_type(sp, i: int) -> int:
    """The SentencePiece piece type as llama.cpp's SentencePieceTokenTypes."""
    import gguf
    T = gguf.TokenType
    tests = ((sp.is_unknown, T.UNKNOWN), (sp.is_control, T.CONTROL), (sp.is_unused, T.UNUSED), (sp.is_byte, T.BYTE))
    for test, kind in tests:
        if test(i):
            return int(kind)
    return int(T.NORMAL)


def _looks_special(token: str) -> bool:
    """llama.cpp's `does_token_look_special`: added tokens some models forget to mark special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _add_spm_vocab(w, model_dir: Path, tokens, scores, toktypes, adds: dict[str, bool]) -> None:
    """llama.cpp's `_set_vocab_sentencepiece` + Gemma's add_space_prefix false; add_bos/add_eos
    from what the tokenizer does rather than SpecialVocab's guess from the files."""
    import gguf

    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(toktypes)
    special = gguf.SpecialVocab(model_dir, n_vocab=len(tokens))
    special.add_special_token.update(adds)
    special.add_to_gguf(w, quiet=True)
    w.add_add_space_prefix(False)


def _spm_fix(model_dir: Path) -> str:
    """Where to get tokenizer.model: the base model `cli.py merge` recorded, else a Gemma 3 hub id."""
    meta, base = model_dir / "twinlora_merge.json", None
    try:
        base = json.loads(meta.read_text()).get("base_model") if meta.is_file() else None
    except (OSError, ValueError):
        pass
    if base and Path(base).is_dir():
        return f"copy {Path(base) / 'tokenizer.model'} into this directory"
    hub = base if base and base.count("/") == 1 else "google/gemma-3-4b-it"
    return (f"copy tokenizer.model from {'the base model ' + base if base else 'the base Gemma 3 model'} into this "
            f"directory, e.g. `hf download {hub} tokenizer.model --local-dir {model_dir}`")


# ------------------------------------------------------------------ shared

def permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py): HF half-split rotary layout →
    llama.cpp's interleaved pairs, per head."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _permute_qk(name: str, data: np.ndarray, cfg: dict) -> np.ndarray:
    """A llama q or k projection permuted for llama.cpp's rope; any other tensor as it is."""
    n_head = int(cfg["num_attention_heads"])
    if name.endswith("self_attn.q_proj.weight"):
        return permute(data, n_head, n_head)
    if name.endswith("self_attn.k_proj.weight"):
        return permute(data, n_head, int(cfg.get("num_key_value_heads") or n_head))
    return data


def _order(name: str):
    """Embeddings first, then blocks in order, then the final norm and head (llama.cpp's order)."""
    m = re.search(r"layers\.(\d+)\.", name)
    return (1, int(m.group(1)), name) if m else ((0, 0, name) if "embed" in name else (2, 0, name))


def _read_tensors(model_dir: Path, skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every tensor of the model's safetensors files as float32 numpy (bf16 read through torch),
    except those whose name contains one of `skip` (never loaded)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelError("no *.safetensors weights", where=str(model_dir), fix="pass a merged model directory")
    out = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                if not any(s in k for s in skip):
                    out[k] = fh.get_tensor(k).float().numpy()
    return out
def _vocab(model_dir: Path, vocab_size: int) -> tuple[list[str], list[int], str, bool]:
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
    tokpre = llamacpp_pre_name(tokenizer) or _pre_tokenizer_name(spec.get("pre_tokenizer"), str(tok_json))
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
    ids = tokenizer("a")["input_ids"]
    adds_bos = bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
    return tokens, [int(t) for t in types], tokpre, adds_bos


# llama.cpp's probe text (convert_hf_to_gguf.py `get_vocab_base_pre`): the sha256 of its token ids
# names the pre-tokenizer. Hashes of the tokenizers this exporter's architectures use, from there.
CHKTXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001F680 (normal) \U0001F636\u200d\U0001F32B\uFE0F "
          "(multiple emojis concatenated) \u2705 \U0001F999\U0001F999 3 33 333 3333 33333 333333 3333333 33333333 "
          "3.3 3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785"
          "\U0001F601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
          "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
          "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, "
          "'D you like some tea? We'Ve a'lL")
LLAMACPP_PRE = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",      # HuggingFaceTB/SmolLM-135M
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",       # openai-community/gpt2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",   # meta-llama/Meta-Llama-3-8B
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",   # abacusai/Smaug-Llama-3-70B
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",       # Qwen/Qwen1.5-7B
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",       # Qwen/Qwen3-Embedding-0.6B
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
}


def llamacpp_pre_name(tokenizer) -> str | None:
    """The `tokenizer.ggml.pre` llama.cpp's converter writes for this tokenizer, if it knows its hash."""
    from hashlib import sha256
    return LLAMACPP_PRE.get(sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest())


def _add_bpe_vocab(w, model_dir: Path, tokens: list[str], toktypes: list[int], tokpre: str,
                   adds_bos: bool = False) -> None:
    """llama.cpp's `_set_vocab_gpt2`: tokens, types, merges, special ids, add_bos/eos, chat template."""
    import gguf

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tokpre)
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    special.add_special_token.setdefault("bos", adds_bos)  # tokenizer_config.json's, else what it does
    if not special.merges:
        raise ModelError("the tokenizer has no BPE merges", where=str(model_dir),
                         fix="GGUF export needs a byte-level BPE tokenizer (tokenizer.json with merges)")
    special.add_to_gguf(w, quiet=True)


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
