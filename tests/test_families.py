"""One model on both backends for every seed family (issue 13): tiny random models with the real
config values of Qwen2.5-3B, Llama-3.2-1B, Gemma-3-4B text and Qwen3-0.6B (tests/seed_models.py), compared on
sequences longer than Gemma's sliding window and, for llama3 rope scaling, longer than 2048.

Stated tolerance: parity's 2e-3 max |Δlogit|; measured here ≤ 1e-5 (fp32, CPU), so the tests
hold 1e-4 to catch a real difference early. Plain mlx-lm (without twinlora's config keys and
Gemma embedding scale) is measured too: it differs by 4e-2 (llama3) and 4e-1 (Gemma), which is
what these tests exist to catch."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import chat_rows, run_cli, tiny_config, write_jsonl
from seed_models import SEEDS, build_seed

TOL = 1e-4
NAMES = list(SEEDS)


def seq(name: str, long: bool = False) -> np.ndarray:
    """Token ids past the sliding window (8); `long`: past 2048 for llama3 scaling (the base test)."""
    n = 2100 if long and name == "llama-3.2-1b" else 40
    return np.random.RandomState(0).randint(3, 380, size=(1, n)).astype(np.int32)


def gap(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def plain_mlx_logits(model_dir, ids, aligned: bool = False) -> np.ndarray:
    """mlx-lm's own loader on config.json as written (no overrides); `aligned`: with transformers'
    Gemma embedding scale (backends/mlx/families.align)."""
    import mlx.core as mx
    from mlx_lm.utils import load_model
    model, _ = load_model(model_dir)
    if aligned:
        from backends.mlx.families import align
        align(model)
    return np.array(model(mx.array(ids)).astype(mx.float32))


def hf_logits(model_dir, ids) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids.astype(np.int64))).logits.numpy()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    return {n: build_seed(n, root / n) for n in NAMES}


@pytest.fixture(scope="module")
def trained(seeds, tmp_path_factory):
    """4 steps per backend per family, same seed (same initial LoRA), chat data, all-linear."""
    from common.runs.run_dir import RunDir
    from jobs.trainer import train
    root = tmp_path_factory.mktemp("seed-runs")
    data = write_jsonl(root / "train.jsonl", chat_rows(8))
    out = {}
    for name, model in seeds.items():
        for backend in ("mlx", "torch"):
            run = root / name / backend
            train(tiny_config(model, data, run, training={"steps": 4, "save_every": 0}), backend,
                  echo=lambda *a, **k: None)
            out[name, backend] = (run, [r["loss"] for r in RunDir(run).read_log() if r.get("event") == "train"])
    return out


@pytest.mark.parametrize("name", NAMES)
def test_base_logits_agree(seeds, name):
    from jobs.session import open_model
    ids = seq(name, long=True)
    torch_logits = open_model("torch", str(seeds[name])).backend.logits(ids)
    assert gap(open_model("mlx", str(seeds[name])).backend.logits(ids), torch_logits) < TOL
    plain = gap(plain_mlx_logits(seeds[name], ids), torch_logits)
    if SEEDS[name].plain_mlx_lm_differs:
        assert plain > 1e-2, plain         # llama3 scaling / Gemma's nested rope + embedding scale lost
    else:
        assert plain < TOL                 # mlx-lm reads qwen2's flat rope_parameters alike


@pytest.mark.parametrize("name", NAMES)
def test_config_json_we_write_is_one_model(seeds, name, tmp_path):
    """normalize_config (converted models, merges): transformers parses the same config, and plain
    mlx-lm reads it as the same model (for Gemma up to the embedding scale, which no config key sets)."""
    from transformers import AutoConfig

    from common.models.families import VERIFIED
    from common.models.resolve import normalize_config
    model = shutil.copytree(seeds[name], tmp_path / "m")
    before = AutoConfig.from_pretrained(str(model)).to_dict()
    normalize_config(model)
    after = AutoConfig.from_pretrained(str(model)).to_dict()
    assert [k for k in before if k != "transformers_version" and after.get(k) != before[k]] == []
    cfg = json.loads((model / "config.json").read_text())
    assert SEEDS[name][0] in VERIFIED and "rope_parameters" in cfg
    if name == "gemma-3-4b":
        assert (cfg["rope_theta"], cfg["rope_local_base_freq"], cfg["sliding_window_pattern"]) == (1e6, 1e4, 6)
        assert cfg["rope_scaling"]["rope_type"] == "linear" and cfg["rope_scaling"]["factor"] == 8.0
    if name == "llama-3.2-1b":
        assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["rope_theta"] == 500000.0
    ids = seq(name)
    ref = hf_logits(model, ids)
    assert gap(plain_mlx_logits(model, ids, aligned=name == "gemma-3-4b"), ref) < TOL


@pytest.mark.parametrize("name", NAMES)
def test_trained_adapter_agrees(seeds, trained, name):
    from jobs.session import open_model
    (run_m, loss_m), (run_t, loss_t) = trained[name, "mlx"], trained[name, "torch"]
    assert len(loss_m) == len(loss_t) == 4 and loss_m[-1] < loss_m[0]
    assert max(abs(a - b) / abs(b) for a, b in zip(loss_m, loss_t)) < 1e-4, (loss_m, loss_t)
    ids = seq(name)
    for adapter in (run_m / "adapter", run_t / "adapter"):
        lm = open_model("mlx", str(seeds[name]), adapter=adapter).backend.logits(ids)
        lt = open_model("torch", str(seeds[name]), adapter=adapter).backend.logits(ids)
        assert gap(lm, lt) < TOL


@pytest.mark.parametrize("name", NAMES)
def test_convert_round_trip(seeds, trained, name, tmp_path):
    adapter = trained[name, "torch"][0] / "adapter"
    assert run_cli("convert", adapter, tmp_path / "mlx", "--to", "mlx", "--model", seeds[name]).exit_code == 0
    r = run_cli("convert", tmp_path / "mlx", tmp_path / "back", "--to", "common", "--model", seeds[name])
    assert r.exit_code == 0, r.output
    from safetensors.numpy import load_file
    a, b = load_file(str(adapter / "adapter_model.safetensors")), load_file(str(tmp_path / "back" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("name", NAMES)
def test_merge_read_by_plain_libraries(seeds, trained, name, backend, tmp_path):
    """The merged directory, read by plain transformers and plain mlx-lm, is base + adapter.
    Gemma under plain mlx-lm: equal once its embedding scale is transformers' (a merged file cannot
    carry it), and without that equal to plain mlx-lm's own base + adapter (same reader)."""
    from jobs.session import open_model
    adapter = trained[name, "torch"][0] / "adapter"
    merged = tmp_path / "merged"
    r = run_cli("merge", "--backend", backend, "--model", seeds[name], "--adapter", adapter, "--output", merged)
    assert r.exit_code == 0, r.output
    ids = seq(name)
    unmerged = open_model("torch", str(seeds[name]), adapter=adapter).backend.logits(ids)
    assert gap(hf_logits(merged, ids), unmerged) < TOL
    gemma = name == "gemma-3-4b"
    assert gap(plain_mlx_logits(merged, ids, aligned=gemma), unmerged) < TOL
    if gemma:
        assert gap(plain_mlx_logits(merged, ids), unmerged) > 1e-3     # bfloat16 sqrt(hidden) in mlx-lm
        assert "embedding scale" in json.loads((merged / "twinlora_merge.json").read_text())["note"]
        assert "[twinlora] note: plain mlx-lm reads this Gemma 3" in r.output


def test_merge_for_plain_mlx_lm_gemma(seeds, trained, tmp_path):
    """`merge --reader mlx-lm`: plain mlx-lm reads the merged Gemma as exactly the trained model
    (transformers then reads another one, as the note says)."""
    from jobs.session import open_model
    adapter = trained["gemma-3-4b", "torch"][0] / "adapter"
    merged = tmp_path / "for-mlx"
    r = run_cli("merge", "--model", seeds["gemma-3-4b"], "--adapter", adapter, "--output", merged, "--reader", "mlx-lm")
    assert r.exit_code == 0 and "pre-scaled by 0.998518" in r.output, r.output   # sqrt(96) / 9.8125
    ids = seq("gemma-3-4b")
    unmerged = open_model("torch", str(seeds["gemma-3-4b"]), adapter=adapter).backend.logits(ids)
    assert gap(plain_mlx_logits(merged, ids), unmerged) < TOL
    assert gap(hf_logits(merged, ids), unmerged) > 1e-3
    info = json.loads((merged / "twinlora_merge.json").read_text())
    assert info["reader"] == "mlx-lm" and json.loads((merged / "config.json").read_text())["tie_word_embeddings"] is False


def test_gguf_round_trip_qwen2(seeds, trained, tmp_path):
    """qwen2 merged → GGUF → transformers' GGUF loader is the same model."""
    adapter = trained["qwen2.5-3b", "torch"][0] / "adapter"
    merged = tmp_path / "qwen"
    assert run_cli("merge", "--backend", "torch", "--model", seeds["qwen2.5-3b"], "--adapter", adapter,
                   "--output", merged).exit_code == 0
    r = run_cli("export-gguf", merged, tmp_path / "g" / "q.gguf")
    assert r.exit_code == 0, r.output
    ids = seq("qwen2.5-3b")
    import torch
    from transformers import AutoModelForCausalLM
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "g"), gguf_file="q.gguf", dtype=torch.float32).eval()
    with torch.no_grad():
        got = back(input_ids=torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    assert gap(got, hf_logits(merged, ids)) < TOL


def test_gguf_llama3_rope_freqs(seeds, tmp_path):
    """Llama-3.2-1B shape → GGUF: llama3 rope scaling as llama.cpp's rope_freqs tensor, whose
    divisors turn the unscaled frequencies into exactly transformers' llama3 inv_freq; every weight
    round-trips (transformers' loader, which ignores rope_freqs, equals the model read unscaled)."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    src = seeds["llama-3.2-1b"]
    out = tmp_path / "g" / "l.gguf"
    r = run_cli("export-gguf", src, out)
    assert r.exit_code == 0, r.output
    assert "llama3 rope scaling is written as llama.cpp's rope_freqs tensor" in r.output
    t = {x.name: x for x in GGUFReader(str(out)).tensors}["rope_freqs.weight"]
    cfg = AutoConfig.from_pretrained(str(src))
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert t.tensor_type.name == "F32" and int(t.n_elements) == head_dim // 2
    theta = cfg.rope_parameters["rope_theta"]
    unscaled = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    assert np.allclose(unscaled / np.asarray(t.data, np.float64), want.double().numpy(), rtol=1e-6)
    assert np.asarray(t.data).max() == cfg.rope_parameters["factor"] and np.asarray(t.data).min() == 1.0
    ids = seq("llama-3.2-1b")
    back = AutoModelForCausalLM.from_pretrained(str(out.parent), gguf_file=out.name, dtype=torch.float32).eval()
    unscaled_cfg = AutoConfig.from_pretrained(str(src))
    unscaled_cfg.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    plain = AutoModelForCausalLM.from_pretrained(str(src), config=unscaled_cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        x = torch.from_numpy(ids.astype(np.int64))
        assert gap(back(input_ids=x).logits.numpy(), plain(input_ids=x).logits.numpy()) < TOL


def test_gguf_round_trip_gemma3_4b_shape(seeds, trained, tmp_path):
    """Gemma-3-4B shape merged → GGUF: linear ×8 written for llama.cpp with a note (transformers'
    loader drops it); with the scaling off, the loader reads back exactly the merged model."""
    from transformers import AutoConfig
    adapter = trained["gemma-3-4b", "torch"][0] / "adapter"
    merged = tmp_path / "gemma"
    assert run_cli("merge", "--backend", "torch", "--model", seeds["gemma-3-4b"], "--adapter", adapter,
                   "--output", merged).exit_code == 0
    r = run_cli("export-gguf", merged, tmp_path / "g" / "g.gguf")
    assert r.exit_code == 0 and "linear rope scaling x8.0" in r.output, r.output
    from gguf import GGUFReader
    fields = {f.name: f.contents() for f in GGUFReader(str(tmp_path / "g" / "g.gguf")).fields.values()}
    assert fields["gemma3.rope.scaling.type"] == "linear" and fields["gemma3.rope.scaling.factor"] == 8.0
    assert fields["gemma3.attention.sliding_window"] == 8 and fields["gemma3.rope.freq_base"] == 1e6
    assert AutoConfig.from_pretrained(str(tmp_path / "g"), gguf_file="g.gguf").rope_parameters[
        "full_attention"]["rope_type"] == "default"


def test_parity_on_a_base_without_chat_template(seeds, tmp_path):
    """A base model with no chat template: raw prompts; the long probe crosses the sliding window."""
    model = shutil.copytree(seeds["gemma-3-4b"], tmp_path / "base")
    for f in model.glob("chat_template.*"):
        f.unlink()
    tc = json.loads((model / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(tc))
    r = run_cli("parity", "--model", model, "--max-new-tokens", "4", "--output", tmp_path / "parity.json")
    assert r.exit_code == 0 and "PARITY: PASS" in r.output, r.output
    assert "long probe: 40 positions (sliding window 8)" in r.output and "warning:" not in r.output
    rep = json.loads((tmp_path / "parity.json").read_text())
    assert rep["family"] == {"model_type": "gemma3_text", "verified": True, "problems": []}
    assert rep["long_probe"]["tokens"] == 40 and rep["long_probe"]["max_abs_logit_diff"] < TOL
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(model))
    assert not tok.chat_template
    assert rep["prompts"][0]["prompt"] == "What is the capital of France?"


def test_family_records_refuse_what_mlx_lm_would_ignore():
    """Each record's checks on transformers-parsed configs: Qwen3 with attention biases or a sliding
    window (mlx-lm's qwen3 has neither) is refused, as is a qwen2 whose head_dim mlx-lm would derive;
    the seed shapes themselves pass (no problem), and an unknown family has no checks."""
    from transformers import AutoConfig

    from common.models.families import family, problems

    def parsed(name, **over):
        kind, values = SEEDS[name].kind, SEEDS[name].config
        return AutoConfig.for_model(kind, **{**values, **over}, vocab_size=384).get_text_config().to_dict()

    assert [problems(parsed(n)) for n in NAMES] == [[] for _ in NAMES]
    assert problems(parsed("qwen3-0.6b", attention_bias=True)) == ["attention_bias (mlx-lm's qwen3 has no attention biases)"]
    assert problems(parsed("qwen3-0.6b", use_sliding_window=True, sliding_window=16)) == [
        "use_sliding_window (mlx-lm's qwen3 attends to the whole sequence)"]
    assert problems(parsed("qwen2.5-3b", head_dim=32)) == [
        "head_dim 32 != hidden_size / num_attention_heads (mlx-lm's qwen2 derives it)"]
    assert family("gpt2").checks == () and not family("gpt2").plain_head


def test_parity_warns_on_an_unverified_family(tmp_path):
    """mistral loads on both backends, but no test proves it: parity says so (stderr) and records it."""
    import torch
    from transformers import AutoModelForCausalLM, MistralConfig

    from tiny_model import build_tokenizer
    tok = build_tokenizer(tmp_path / "m")
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=None,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(tmp_path / "m"))
    r = run_cli("parity", "--model", tmp_path / "m", "--max-new-tokens", "2", "--output", tmp_path / "p.json")
    assert "warning: model_type 'mistral' is not one twinlora proves equal on both backends" in r.output, r.output
    assert json.loads((tmp_path / "p.json").read_text())["family"]["verified"] is False


def test_spm_model_rebuilt_from_gguf(seeds, tmp_path):
    """convert_gguf rebuilds Gemma's tokenizer.model from a GGUF's vocabulary (the embedded Gemma's
    GGUF has no tokenizer.model beside it): same pieces, scores, types and ids as the original."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    from common.adapters.gguf_export import export_gguf
    from common.models.gguf_vocab import write_spm_model
    from test_gguf_gemma3 import FRENCH
    model = seeds["gemma-3-4b"]
    with pytest.warns(UserWarning):
        gguf = export_gguf(model, tmp_path / "g.gguf")
    write_spm_model(gguf, tmp_path / "tokenizer.model")
    a, b = pb.ModelProto(), pb.ModelProto()
    a.ParseFromString((model / "tokenizer.model").read_bytes())
    b.ParseFromString((tmp_path / "tokenizer.model").read_bytes())
    assert [(p.piece, p.type) for p in a.pieces] == [(p.piece, p.type) for p in b.pieces]
    # scores of NORMAL pieces drive BPE; llama.cpp writes -1000 for the special/added ones (never merged)
    assert [p.score for p in a.pieces if p.type == 1] == pytest.approx([p.score for p in b.pieces if p.type == 1])
    sa = spm.SentencePieceProcessor(model_file=str(model / "tokenizer.model"))
    sb = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    for text in FRENCH:
        assert sb.encode(text) == sa.encode(text)


def test_embedded_gemma_converted_directory():
    """The converted Gemma 3 270M (when this machine has converted it): config.json carries mlx-lm's
    keys, the tokenizer has Gemma's turn format, tokenizer.model gives tokenizer.json's ids."""
    from common.models.resolve import GEMMA_NAME, GEMMA_TEMPLATE, cache_root
    model = cache_root() / "models" / GEMMA_NAME
    if not (model / "config.json").is_file():
        pytest.skip("gemma3-270m not converted on this machine yet (cli.py parity --model gemma3-270m)")
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from common.adapters.gguf_export import PROBE
    cfg = json.loads((model / "config.json").read_text())
    assert (cfg["model_type"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["sliding_window"]) == ("gemma3_text", 640, 18, 512)
    assert (cfg["rope_theta"], cfg["rope_local_base_freq"], cfg["sliding_window_pattern"]) == (1e6, 1e4, 6)
    assert cfg["rope_scaling"] is None and "quantization_config" not in cfg and cfg["tie_word_embeddings"] is True
    tok = AutoTokenizer.from_pretrained(str(model))
    assert tok.chat_template == GEMMA_TEMPLATE.read_text(encoding="utf-8")
    msgs = [{"role": "system", "content": "Sois bref."}, {"role": "user", "content": "Bonjour"},
            {"role": "assistant", "content": "Salut"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<bos><start_of_turn>user\nSois bref.\n\nBonjour<end_of_turn>\n<start_of_turn>model\nSalut<end_of_turn>\n")
    sp = spm.SentencePieceProcessor(model_file=str(model / "tokenizer.model"))
    assert sp.encode(PROBE) == tok(PROBE, add_special_tokens=False)["input_ids"]
