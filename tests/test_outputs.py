"""Outputs other tools load as they are: an adapter PEFT's AutoPeftModel opens offline, a model
card, portable paths in the metadata, and plain mlx-lm adapters converted into PEFT ones."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import chat_rows, tiny_config, write_jsonl

from jobs.trainer import train


@pytest.fixture(scope="module")
def torch_run(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    data = write_jsonl(root / "train.jsonl", chat_rows(12))
    template = root / "tpl.jinja"
    from tiny_model import CHATML
    template.write_text(CHATML)
    cfg = tiny_config(tiny_model, data, root / "run", training={"steps": 3},
                      data={"template": str(template), "system_prompt": "Tu es juriste."})
    train(cfg, "torch", echo=lambda *a, **k: None)
    return root / "run" / "adapter"


def test_autopeft_loads_the_adapter_offline(torch_run, tiny_model, monkeypatch):
    import torch
    from peft import AutoPeftModelForCausalLM
    from jobs.session import open_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = json.loads((torch_run / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(Path(tiny_model).resolve())
    model = AutoPeftModelForCausalLM.from_pretrained(str(torch_run))
    ids = np.array([[5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        theirs = model(input_ids=torch.from_numpy(ids)).logits.float().numpy()
    ours = open_model("torch", str(tiny_model), adapter=torch_run).backend.logits(ids)
    assert np.abs(ours).max() > 0.1
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
    # the trained B is not zero: without the adapter the logits differ
    base = open_model("torch", str(tiny_model)).backend.logits(ids)
    assert np.abs(base - ours).max() > 1e-3


def test_model_card_and_relative_paths(torch_run, tiny_model):
    card = (torch_run / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "library_name: peft\n" in card
    assert f"convert_lora_to_gguf.py path/to/adapter --base {Path(tiny_model).resolve()}" in card
    assert "| rank r | 8 |" in card and "| system prompt | Tu es juriste. |" in card
    meta = json.loads((torch_run / "twinlora.json").read_text())
    assert (torch_run / meta["base_model"]["path_relative"]).resolve() == Path(tiny_model).resolve()
    train_rel = meta["data"]["train"]["path_relative"]
    assert (torch_run / train_rel).resolve() == Path(meta["data"]["train"]["path"]).resolve()
    assert meta["system_prompt"] == "Tu es juriste."
    # the Jinja template travels with the adapter, and is what eval/generate use by default
    from common.adapters.format import recorded_prompting
    template, system = recorded_prompting(torch_run, meta)
    assert Path(template) == torch_run / "twinlora_template.jinja" and system == "Tu es juriste."
    assert Path(template).read_text() == Path(meta["config"]["data"]["template"]).read_text()


def test_peft_base_name_keeps_hub_ids(tmp_path):
    from common.models.resolve import peft_base_name
    assert peft_base_name("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path / "snap") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert peft_base_name("embedded", tmp_path / "m") == str((tmp_path / "m").resolve())
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    assert peft_base_name(str(tmp_path / "org" / "name"), tmp_path / "org" / "name") == str(tmp_path / "org" / "name")


def test_manifest_records_relative_sources(tmp_path):
    from common.data.recipes import run_recipe
    src = write_jsonl(tmp_path / "raw" / "rows.jsonl", chat_rows(10))
    m = run_recipe("jsonl", [str(src)], tmp_path / "prepared", seed=0)
    assert m["sources"][0]["path_relative"] == "../raw/rows.jsonl"


# ---------------------------------------------------------------- adapters from plain mlx-lm

@pytest.fixture(scope="module")
def mlx_lm_adapter(tiny_model, tmp_path_factory):
    """An adapter as `mlx_lm lora --num-layers 1` writes it (its own functions: linear_to_lora_layers,
    save_config, trainable parameters saved with mx.save_safetensors), lora_b made non-zero as
    after training. Its config has lora_parameters {rank, scale, dropout} and no keys."""
    import shutil
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load, save_config
    from common.models.resolve import normalize_config

    root = tmp_path_factory.mktemp("mlxlm")
    base = root / "base"
    shutil.copytree(tiny_model, base)
    normalize_config(base)  # mlx-lm reads rope_theta at the top level
    model, _ = load(str(base))
    model.freeze()
    linear_to_lora_layers(model, 1, {"rank": 4, "dropout": 0.0, "scale": 20.0})
    mx.random.seed(3)
    model.update(tree_map(lambda p: mx.random.normal(p.shape) * 0.02, model.trainable_parameters()))
    out = root / "adapters"
    out.mkdir()
    mx.save_safetensors(str(out / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    save_config({"model": str(base), "fine_tune_type": "lora", "num_layers": 1, "iters": 3,
                 "lora_parameters": {"rank": 4, "dropout": 0.0, "scale": 20.0}}, out / "adapter_config.json")
    return base, out


def test_plain_mlx_lm_adapter_converts_into_one_peft_loads(mlx_lm_adapter, tmp_path, monkeypatch):
    import mlx.core as mx
    import torch
    from mlx_lm.utils import load
    from peft import AutoPeftModelForCausalLM
    from helpers import run_cli

    base, src = mlx_lm_adapter
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run_cli("convert", src, tmp_path / "peft", "--to", "common")
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert cfg["layers_to_transform"] == [1] and cfg["r"] == 4 and cfg["lora_alpha"] == 80.0
    assert cfg["base_model_name_or_path"] == str(base.resolve())
    ids = np.array([[5, 17, 42, 99, 3, 250, 7, 12]])
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "peft"))
    assert sum("lora_A" in n for n, _ in peft_model.named_parameters()) == 7  # block 1 only
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.from_numpy(ids)).logits.float().numpy()
    mlx_model, _ = load(str(base), adapter_path=str(src))
    ref = np.array(mlx_model(mx.array(ids)).astype(mx.float32))
    mlx_base, _ = load(str(base))
    assert np.abs(ref - np.array(mlx_base(mx.array(ids)))).max() > 1e-2  # the adapter matters
    np.testing.assert_allclose(theirs, ref, atol=1e-4, rtol=0)
    # --base names another directory holding the same model: used instead of the recorded one
    r = run_cli("convert", src, tmp_path / "peft2", "--to", "common", "--base", base)
    assert r.exit_code == 0, r.output


def test_hub_id_base_loads_offline_from_the_hf_cache(torch_run, tiny_model, tmp_path, monkeypatch):
    """A hub-id base (what twinlora writes for a hub model) resolves offline from the Hugging Face
    cache layout: models--org--name/snapshots/<rev>/ + refs/main."""
    import shutil
    import torch
    from peft import AutoPeftModelForCausalLM
    from jobs.session import open_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--twinlora-test--tiny-llama"
    shutil.copytree(tiny_model, repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    adapter = tmp_path / "adapter"
    shutil.copytree(torch_run, adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "twinlora-test/tiny-llama"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter), cache_dir=str(tmp_path / "hub"))
    ids = np.array([[5, 17, 42, 99]])
    with torch.no_grad():
        theirs = model(input_ids=torch.from_numpy(ids)).logits.float().numpy()
    ours = open_model("torch", str(tiny_model), adapter=torch_run).backend.logits(ids)
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
