"""The spine: same ids/masks on both backends, exact adapter round trips, cross-backend logits,
merge, training and resume, config read the same by both libraries."""
from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import chat_rows, run_cli, tiny_config, write_jsonl

from common.adapters.format import (MLX_WEIGHTS, load_adapter, mlx_to_peft, peft_to_mlx, scale_of)
from common.data.formats import load_examples
from common.runs.run_dir import RunDir
from common.training.tokenize import Tokenizer, load_tokenizer
from jobs.trainer import train

BACKENDS = ("mlx", "torch")


def test_prompt_mask_covers_exactly_the_prompt(tiny_model, chat_jsonl):
    tok = load_tokenizer(tiny_model)
    tk = Tokenizer(tok, "chat", mask_prompt=True, max_length=128)
    ex = load_examples(chat_jsonl)[0]
    t = tk.encode(ex)
    first = t.mask.index(1)
    assert tok.decode(list(t.ids[:first])) == "<|im_start|>user\nQue dit l'article L100-1 ?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(list(t.ids[first:])) == "L'article L100-1 prévoit le droit 0.<|im_end|>\n"
    assert set(t.mask[first:]) == {1}
    # Without masking every token after the first is a target.
    assert Tokenizer(tok, "chat", mask_prompt=False).encode(ex).mask == (1,) * len(t.ids)


def test_both_backends_receive_identical_batches(tiny_model, chat_jsonl, tmp_path, monkeypatch):
    from backends import get_backend
    seen = {}
    for name in BACKENDS:
        cls = get_backend(name)
        original = cls.accumulate
        got = seen.setdefault(name, [])

        def spy(self, batch, sync=True, _orig=original, _got=got):
            _got.append((batch.ids.copy(), batch.mask.copy()))
            return _orig(self, batch, sync)
        monkeypatch.setattr(cls, "accumulate", spy)
        train(tiny_config(tiny_model, chat_jsonl, tmp_path / name, training={"grad_accumulation": 2}), name, echo=lambda *a, **k: None)
    assert len(seen["mlx"]) == len(seen["torch"]) == 8
    for (ia, ma), (ib, mb) in zip(seen["mlx"], seen["torch"]):
        assert ia.dtype == ib.dtype and np.array_equal(ia, ib)
        assert np.array_equal(ma, mb)


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """One short run per backend from the same seed (so the same initial LoRA weights)."""
    root = tmp_path_factory.mktemp("runs")
    data = root / "train.jsonl"
    rows = chat_rows(12)
    write_jsonl(data, rows)
    out = {}
    for name in BACKENDS:
        summary = train(tiny_config(tiny_model, data, root / name, training={"steps": 6}), name, echo=lambda *a, **k: None)
        out[name] = (root / name, summary)
    return out, data


def test_training_lowers_loss_and_curves_agree(trained):
    runs, _ = trained
    logs = {n: [r for r in RunDir(p).read_log() if r.get("event") == "train"] for n, (p, _) in runs.items()}
    for name, rows in logs.items():
        assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, name
    # Same init, same batches, same loss/schedule/optimizer: the curves agree closely.
    gaps = [abs(a["loss"] - b["loss"]) for a, b in zip(logs["mlx"], logs["torch"])]
    assert len(gaps) == 6 and max(gaps) < 1e-4, gaps


def test_run_directory_contents(trained):
    runs, _ = trained
    for name, (path, _) in runs.items():
        for f in ("config.yaml", "log.jsonl", "loss.png", "summary.json", "README.md",
                  "adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/twinlora.json"):
            assert (path / f).is_file(), (name, f)
        meta = json.loads((path / "adapter/twinlora.json").read_text())
        assert meta["backend"] == name and len(meta["base_model"]["sha256"]) == 64
        assert meta["data"]["train"]["sha256"] and meta["template"] == "chat"
        assert meta["metrics"]["final_loss"] > 0
    assert (runs["mlx"][0] / "adapter/mlx" / MLX_WEIGHTS).is_file()


def test_adapter_round_trip_is_bit_exact_and_peft_loads_it(trained, tiny_model, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    runs, _ = trained
    mlx_native = runs["mlx"][0] / "adapter" / "mlx"
    # mlx-lm native → common
    assert run_cli("convert", mlx_native, tmp_path / "common", "--to", "common").exit_code == 0
    spec, w_common, _ = load_adapter(tmp_path / "common")
    from safetensors.numpy import load_file
    native = load_file(str(mlx_native / MLX_WEIGHTS))
    # PEFT loads it; its state dict is the same numbers
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "common"))
    sd = {k.replace(".default", ""): v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert set(sd) == set(w_common)
    for k, v in w_common.items():
        assert np.array_equal(sd[k].numpy(), v)
    assert peft_model.peft_config["default"].lora_alpha / peft_model.peft_config["default"].r == pytest.approx(spec.scale)
    # PEFT saves it again → common → mlx-lm: bit-exact with the original
    peft_model.save_pretrained(str(tmp_path / "peft_saved"))
    assert run_cli("convert", tmp_path / "peft_saved", tmp_path / "back", "--to", "mlx", "--model", tiny_model).exit_code == 0
    back = load_file(str(tmp_path / "back" / MLX_WEIGHTS))
    assert set(back) == set(native)
    for k in native:
        assert back[k].dtype == native[k].dtype and np.array_equal(back[k], native[k])
    cfg_a = json.loads((mlx_native / "adapter_config.json").read_text())
    cfg_b = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert cfg_a["lora_parameters"] == cfg_b["lora_parameters"] and cfg_a["num_layers"] == cfg_b["num_layers"]


def test_weight_converters_are_exact_inverses():
    rng = np.random.default_rng(0)
    w = {"model.layers.0.self_attn.q_proj.lora_a": rng.standard_normal((64, 8)).astype(np.float32),
         "model.layers.0.self_attn.q_proj.lora_b": rng.standard_normal((8, 32)).astype(np.float32),
         "model.layers.0.self_attn.q_proj.m": rng.standard_normal((32,)).astype(np.float32)}
    p = mlx_to_peft(w)
    assert p["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (8, 64)
    assert p["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].shape == (32, 8)
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector" in p
    back = peft_to_mlx(p)
    assert all(np.array_equal(back[k], w[k]) for k in w)
    assert scale_of(16, 32, False) == 2.0 and scale_of(16, 32, True) == 8.0


def test_logits_agree_across_backends_with_adapter(trained, tiny_model):
    from jobs.parity import compare_logits
    from jobs.session import open_model
    runs, _ = trained
    for trained_on in BACKENDS:
        adapter = runs[trained_on][0] / "adapter"
        ids = np.array([[1, 5, 17, 42, 99, 7, 3, 250]], dtype=np.int32)
        la = open_model("mlx", str(tiny_model), adapter=adapter).backend.logits(ids)
        lb = open_model("torch", str(tiny_model), adapter=adapter).backend.logits(ids)
        base = open_model("torch", str(tiny_model)).backend.logits(ids)
        cmp = compare_logits(la, lb)
        assert cmp["max_abs_logit_diff"] < 1e-4 and cmp["mean_kl"] < 1e-9, cmp
        assert np.abs(lb - base).max() > 1e-2  # the adapter really changes the model


def test_parity_command_passes(trained, tiny_model):
    runs, _ = trained
    r = run_cli("parity", "--model", tiny_model, "--adapter", runs["torch"][0] / "adapter", "--max-new-tokens", "6",
                "--prompt", "Que dit l'article L100-1 ?", "--runs", runs["mlx"][0], runs["torch"][0])
    assert r.exit_code == 0, r.output
    assert "PARITY: PASS" in r.output and "loss curves: 6 steps" in r.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_equals_base_plus_adapter(trained, tiny_model, tmp_path, backend):
    from jobs.session import open_model
    runs, _ = trained
    adapter = runs[backend][0] / "adapter"
    r = run_cli("merge", "--backend", backend, "--model", tiny_model, "--adapter", adapter, "--output", tmp_path / "merged")
    assert r.exit_code == 0, r.output
    ids = np.array([[1, 9, 33, 120, 64, 2]], dtype=np.int32)
    with_adapter = open_model(backend, str(tiny_model), adapter=adapter).backend.logits(ids)
    # The merged directory loads in both libraries and gives the base+adapter logits.
    for other in BACKENDS:
        merged = open_model(other, str(tmp_path / "merged")).backend.logits(ids)
        assert np.abs(merged - with_adapter).max() < 1e-4, (backend, other)


def test_resume_from_checkpoint_continues(trained, tiny_model, tmp_path):
    runs, data = trained
    for name in BACKENDS:
        out = tmp_path / name
        train(tiny_config(tiny_model, data, out, training={"steps": 6}), name, echo=lambda *a, **k: None)
        # drop the final state, keep the step-4 checkpoint, resume: same final adapter as the full run
        import shutil
        shutil.rmtree(out / "checkpoints" / "step-000006")
        shutil.rmtree(out / "adapter")
        train(tiny_config(tiny_model, data, out, training={"steps": 6}), name, resume=True, echo=lambda *a, **k: None)
        _, a, _ = load_adapter(out / "adapter")
        _, b, _ = load_adapter(runs[name][0] / "adapter")
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-6, name
        steps = [r["step"] for r in RunDir(out).read_log() if r.get("event") == "train"]
        assert steps == [1, 2, 3, 4, 5, 6]


def test_init_adapter_continues_training(trained, tiny_model, tmp_path):
    runs, data = trained
    first = [r["loss"] for r in RunDir(runs["torch"][0]).read_log() if r.get("event") == "train"]
    train(tiny_config(tiny_model, data, tmp_path / "more", training={"steps": 2}), "mlx",
          init_adapter=str(runs["torch"][0] / "adapter"), echo=lambda *a, **k: None)
    cont = [r["loss"] for r in RunDir(tmp_path / "more").read_log() if r.get("event") == "train"]
    assert cont[0] < first[0] - 0.5  # starts from the trained adapter, not from scratch


def test_config_json_read_the_same_by_transformers_and_mlx(tiny_model):
    from transformers import AutoConfig
    from backends.mlx.backend import Backend as MlxBackend
    hf = AutoConfig.from_pretrained(str(tiny_model))
    be = MlxBackend(tiny_model)
    assert hf.rope_parameters["rope_theta"] == 500000.0
    assert be.model.args.rope_theta == 500000.0       # not mlx-lm's default 10000
    assert be.model.args.tie_word_embeddings == hf.tie_word_embeddings
    assert be.model.args.num_hidden_layers == hf.num_hidden_layers


def test_embedded_model_config_is_consistent():
    """The converted SmolLM2 config: rope_theta at the top level too, tied embeddings."""
    from common.models.resolve import EMBEDDED_NAME, cache_root
    cfg_path = cache_root() / "models" / EMBEDDED_NAME / "config.json"
    if not cfg_path.is_file():
        pytest.skip("embedded model not converted on this machine yet (run the demo)")
    cfg = json.loads(cfg_path.read_text())
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] == 100000.0
    assert cfg["tie_word_embeddings"] is True and "quantization_config" not in cfg
