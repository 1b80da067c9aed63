"""Outputs other tools load as they are: an adapter PEFT's AutoPeftModel opens offline, a model
card, portable paths in the metadata, and plain mlx-lm adapters converted into PEFT ones."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import chat_rows, tiny_config, write_jsonl

from common.trainer import train


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
    from common.session import open_model

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
    from common.adapter import recorded_prompting
    template, system = recorded_prompting(torch_run, meta)
    assert Path(template) == torch_run / "twinlora_template.jinja" and system == "Tu es juriste."
    assert Path(template).read_text() == Path(meta["config"]["data"]["template"]).read_text()


def test_peft_base_name_keeps_hub_ids(tmp_path):
    from common.models import peft_base_name
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
