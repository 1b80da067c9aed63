"""GGUF export of Gemma 3, read back by transformers' GGUF loader: a tiny random Gemma3ForCausalLM
(6 layers, so 5 sliding + 1 full as Gemma 3's pattern has it; head_dim 256 != hidden/heads; tied
embeddings; random norm weights, so the 1 + w shift shows) with a SentencePiece BPE tokenizer.model
trained here; the multimodal wrapper written text-only; what is noted and what is refused."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tiny_model import CORPUS

IDS = np.array([[2, 359, 336, 335, 339, 338, 347, 12, 288, 358, 267, 333, 5, 100]], dtype=np.int64)
TEXT = dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
            num_key_value_heads=2, head_dim=256, query_pre_attn_scalar=256, sliding_window=4,
            max_position_embeddings=512, rms_norm_eps=1e-5, pad_token_id=0, eos_token_id=1, bos_token_id=2,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 100000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
CHAT = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}"
        "\n{{ m['content'] }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
FRENCH = ["Le salarié a droit à un congé payé ; l'employeur fixe les dates après avis du comité.",
          "Ça coûte 12,50 € — « déjà vu », naïveté, Œuvre, où ?  Deux espaces\tet une tabulation."]


def build_spm(out: Path) -> None:
    """Gemma-style SentencePiece: BPE with byte fallback, no dummy prefix, whitespace kept, Gemma's
    ids for pad/eos/bos/unk and two turn markers."""
    import sentencepiece as spm
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=384, model_type="bpe", byte_fallback=True,
        add_dummy_prefix=False, normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, bos_piece="<bos>", eos_piece="<eos>", control_symbols=["<mask>"],
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], num_threads=1, minloglevel=2)
    (out / "tokenizer.model").write_bytes(buf.getvalue())


def build_gemma3(out: Path, multimodal: bool = False) -> Path:
    """tokenizer.model + GemmaTokenizer (adds BOS, Gemma-like chat template) + random fp32 weights."""
    import torch
    from transformers import (Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Gemma3TextConfig,
                              GemmaTokenizer)

    out.mkdir(parents=True)
    build_spm(out)
    tok = GemmaTokenizer.from_pretrained(str(out), add_bos_token=True)
    tok.chat_template = CHAT
    tok.save_pretrained(str(out))
    torch.manual_seed(0)
    if multimodal:
        vision = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, image_size=28, patch_size=14)
        config = Gemma3Config(text_config=TEXT, vision_config=vision, mm_tokens_per_image=4, image_token_index=383,
                              boi_token_index=382, eoi_token_index=381)
        model = Gemma3ForConditionalGeneration(config)
    else:
        model = Gemma3ForCausalLM(Gemma3TextConfig(**TEXT))
    with torch.no_grad():  # norms start at 0 (scale 1 + 0): randomise them so the 1 + w shift is tested
        for p in model.parameters():
            p.normal_(0.0, 0.08 if p.dim() == 2 else 0.3)
    model.float().save_pretrained(str(out))
    return out


def logits(model_dir: Path, **kw) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kw).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(IDS)).logits.float().numpy()


def fields(path: Path) -> dict:
    from gguf import GGUFReader
    reader = GGUFReader(str(path))
    return {f.name: f.contents() for f in reader.fields.values()} | {"tensors": {t.name: t for t in reader.tensors}}


def edited(src: Path, dst: Path, **changes) -> Path:
    """A copy of `src` with config.json keys changed (weights and tokenizer as they are)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(cfg | changes))
    return dst


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> Path:
    return build_gemma3(tmp_path_factory.mktemp("gemma3") / "model")


# f32: measured 0.0 (the loader's (1 + w) - 1 is off by an ulp, but the model's 1 + that is 1 + w again);
# f16: measured 2.5e-3
@pytest.mark.parametrize("dtype,tol", [("f32", 1e-5), ("f16", 2e-2)])
def test_gguf_gemma3_round_trip(gemma, tmp_path, dtype, tol):
    from safetensors.numpy import load_file

    from common.adapters.gguf_export import export_gguf
    out = export_gguf(gemma, tmp_path / f"gemma3-{dtype}.gguf", dtype)
    assert out.is_file() and not list(tmp_path.glob(".*.tmp"))
    diff = np.abs(logits(tmp_path, gguf_file=out.name) - logits(gemma)).max()
    assert diff < tol, diff
    f = fields(out)
    assert f["general.architecture"] == "gemma3" and f["gemma3.block_count"] == 6
    assert f["gemma3.attention.key_length"] == f["gemma3.attention.value_length"] == 256
    assert f["gemma3.attention.sliding_window"] == 4 and f["gemma3.rope.freq_base"] == pytest.approx(100000.0)
    assert f["gemma3.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert "gemma3.rope.scaling.type" not in f and "output.weight" not in f["tensors"]  # tied embeddings
    hf = load_file(str(gemma / "model.safetensors"))
    norms = [("attn_norm", "input_layernorm"), ("post_attention_norm", "post_attention_layernorm"),
             ("ffn_norm", "pre_feedforward_layernorm"), ("post_ffw_norm", "post_feedforward_layernorm"),
             ("attn_q_norm", "self_attn.q_norm"), ("attn_k_norm", "self_attn.k_norm")]
    for gg, name in norms:
        written = np.array(f["tensors"][f"blk.5.{gg}.weight"].data)
        assert np.allclose(written, hf[f"model.layers.5.{name}.weight"] + 1, atol=1e-6), gg
    assert np.allclose(np.array(f["tensors"]["output_norm.weight"].data), hf["model.norm.weight"] + 1, atol=1e-6)


def test_gguf_gemma3_sentencepiece_vocab(gemma, tmp_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from common.adapters.gguf_export import export_gguf
    out = export_gguf(gemma, tmp_path / "gemma3.gguf")
    f = fields(out)
    assert f["tokenizer.ggml.model"] == "llama" and f["tokenizer.ggml.pre"] == "default"
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.add_space_prefix"] is False
    ids = (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"], f["tokenizer.ggml.padding_token_id"])
    assert ids == (2, 1, 0)
    assert f["tokenizer.chat_template"] == CHAT
    sp = spm.SentencePieceProcessor(model_file=str(gemma / "tokenizer.model"))
    assert f["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(384)]
    assert f["tokenizer.ggml.scores"][10:] == pytest.approx([sp.get_score(i) for i in range(10, 384)])
    types = f["tokenizer.ggml.token_type"]   # llama.cpp: CONTROL 3, USER_DEFINED 4, BYTE 6, NORMAL 1
    assert types[:7] == [3, 3, 3, 3, 3, 4, 4] and types[7:263] == [6] * 256 and set(types[263:]) == {1}
    tok = AutoTokenizer.from_pretrained(str(gemma))
    back = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=out.name)
    for text in FRENCH:
        assert back(text)["input_ids"] == tok(text)["input_ids"] == [2] + sp.encode(text), text
    msgs = [{"role": "user", "content": FRENCH[0]}]
    assert (back.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            == tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
    assert back.decode(back(FRENCH[1])["input_ids"], skip_special_tokens=True) == FRENCH[1]


def test_gguf_gemma3_multimodal_writes_the_language_model(tmp_path):
    from helpers import run_cli
    model, out = build_gemma3(tmp_path / "mm", multimodal=True), tmp_path / "g" / "gemma3.gguf"
    r = run_cli("export-gguf", model, out)
    assert r.exit_code == 0, r.output
    notes = [line for line in r.output.splitlines() if line.startswith("[twinlora] note:")]
    assert len(notes) == 1 and "language model only" in notes[0] and "mmproj" in notes[0], r.output
    assert not [t for t in fields(out)["tensors"] if t.startswith(("v.", "mm."))]
    # measured 0.0: the Gemma3ForConditionalGeneration on text == the exported Gemma3ForCausalLM
    assert np.abs(logits(out.parent, gguf_file=out.name) - logits(model)).max() < 1e-5


def test_gguf_gemma3_linear_rope_written_and_noted(gemma, tmp_path):
    """Gemma-3-4B+'s linear x8 on the global layers: written for llama.cpp, which honours it;
    transformers' GGUF loader drops it, and the exporter says so."""
    from transformers import AutoConfig

    from common.adapters.gguf_export import export_gguf
    rope = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
    model = edited(gemma, tmp_path / "scaled", rope_parameters=rope)
    with pytest.warns(UserWarning, match="linear rope scaling x8.0 .* transformers' GGUF loader ignores it"):
        out = export_gguf(model, tmp_path / "g" / "gemma3.gguf")
    f = fields(out)
    assert f["gemma3.rope.scaling.type"] == "linear" and f["gemma3.rope.scaling.factor"] == pytest.approx(8.0)
    loaded = AutoConfig.from_pretrained(str(out.parent), gguf_file=out.name)
    assert loaded.rope_parameters["full_attention"]["rope_type"] == "default"  # what the note warns about


def test_gguf_gemma3_refuses(gemma, tmp_path):
    from common.errors import ModelError
    from common.adapters.gguf_export import export_gguf
    # every 2nd layer full attention: llama.cpp and transformers' loader would both run every 6th
    odd = edited(gemma, tmp_path / "odd", layer_types=["sliding_attention", "full_attention"] * 3,
                 final_logit_softcapping=30.0)
    with pytest.raises(ModelError) as err:
        export_gguf(odd, tmp_path / "x.gguf")
    msg = str(err.value)
    assert str(odd / "config.json") in msg and "layer_types" in msg and "final_logit_softcapping" in msg
    assert "fix: GGUF holds only Gemma 3's standard settings; run this model from its safetensors directory" in msg
    # what `cli.py merge` leaves under transformers 5: tokenizer.json, no tokenizer.model
    merged = shutil.copytree(gemma, tmp_path / "merged", ignore=shutil.ignore_patterns("tokenizer.model"))
    (merged / "twinlora_merge.json").write_text(json.dumps({"base_model": "google/gemma-3-1b-it"}))
    with pytest.raises(ModelError, match=r"needs the SentencePiece tokenizer.model.* fix: copy tokenizer.model from "
                                         r"the base model google/gemma-3-1b-it into this directory, e.g. "
                                         r"`hf download google/gemma-3-1b-it tokenizer.model --local-dir "):
        export_gguf(merged, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


def test_train_merge_export_gemma3(gemma, tmp_path):
    """The user's path: train a LoRA on the Gemma 3 base, merge it (the base's tokenizer.model is
    carried into the merged directory), export the merged model to GGUF and read it back."""
    from helpers import chat_rows, run_cli, write_jsonl
    rows = chat_rows(6)
    data = tmp_path / "train.jsonl"
    write_jsonl(data, rows)
    r = run_cli("train", "--backend", "torch", "--model", gemma, "--data", data, "--output", tmp_path / "run",
                "--steps", "2", "--set", "training.lr=1e-2", "--set", "lora.target_modules=all-linear")
    assert r.exit_code == 0, r.output
    merged = tmp_path / "merged"
    r = run_cli("merge", "--backend", "torch", "--model", gemma, "--adapter", tmp_path / "run" / "adapter",
                "--output", merged)
    assert r.exit_code == 0, r.output
    assert (merged / "tokenizer.model").read_bytes() == (gemma / "tokenizer.model").read_bytes()
    assert np.abs(logits(merged) - logits(gemma)).max() > 1e-3  # the adapter changed the model
    r = run_cli("export-gguf", merged, tmp_path / "gguf" / "merged.gguf")
    assert r.exit_code == 0, r.output
    assert np.abs(logits(tmp_path / "gguf", gguf_file="merged.gguf") - logits(merged)).max() < 1e-5
