"""With --adapter and no --model, merge, generate, eval and parity load the base the adapter records
(as PEFT's AutoPeftModelForCausalLM does) and say so in one line; --model still overrides."""
from __future__ import annotations

import json
import shutil

import pytest

from error_rows import expect_error
from helpers import run_cli, tiny_config


@pytest.fixture(scope="module")
def other_adapter(other_tiny_model, tmp_path_factory):
    """A 1-step adapter trained on other_tiny_model (not the embedded model, not tiny_model)."""
    from helpers import chat_rows, write_jsonl
    from jobs.trainer import train
    root = tmp_path_factory.mktemp("recorded")
    data = write_jsonl(root / "train.jsonl", chat_rows(4))
    train(tiny_config(other_tiny_model, data, root / "run", training={"steps": 1}), "torch", echo=lambda *a, **k: None)
    return root / "run" / "adapter"


def _said(r, base) -> None:
    assert r.output.count("[twinlora] base:") == 1, r.output
    assert f"[twinlora] base: {base} (recorded by the adapter; --model overrides)" in r.output, r.output


def test_generate_uses_the_recorded_base(other_adapter, other_tiny_model, tiny_model):
    r = run_cli("generate", "--adapter", other_adapter, "--prompt", "hi", "--max-new-tokens", "2")
    assert r.exit_code == 0, r.output
    _said(r, other_tiny_model)
    r = run_cli("generate", "--model", tiny_model, "--adapter", other_adapter, "--prompt", "hi", "--max-new-tokens", "2")
    expect_error(r, "adapter was trained on base", "--model")  # --model overrides: the wrong base is still refused
    assert "[twinlora] base:" not in r.output


def test_eval_and_merge_use_the_recorded_base(other_adapter, other_tiny_model, tmp_path):
    from helpers import chat_rows, write_jsonl
    data = write_jsonl(tmp_path / "test.jsonl", chat_rows(2))
    r = run_cli("eval", "--adapter", other_adapter, "--data", data, "--output", tmp_path / "eval", "--metrics", "rouge",
                "--max-new-tokens", "2")
    assert r.exit_code == 0, r.output
    _said(r, other_tiny_model)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["settings"]["model"] == str(other_tiny_model)
    r = run_cli("merge", "--adapter", other_adapter, "--output", tmp_path / "merged")
    assert r.exit_code == 0, r.output
    _said(r, other_tiny_model)
    assert json.loads((tmp_path / "merged" / "twinlora_merge.json").read_text())["base_model"] == str(other_tiny_model)


def test_parity_uses_the_recorded_base(other_adapter, other_tiny_model):
    r = run_cli("parity", "--adapter", other_adapter, "--prompt", "hi", "--max-new-tokens", "2")
    assert r.exit_code in (0, 1) and "PARITY:" in r.output, r.output
    _said(r, other_tiny_model)


def test_mlx_layout_and_plain_peft_config_name_their_base(other_adapter, other_tiny_model, tmp_path):
    """Without twinlora.json: PEFT's base_model_name_or_path; mlx-lm's adapter_config.json "model"."""
    from jobs.session import recorded_base
    peft = tmp_path / "peft"
    shutil.copytree(other_adapter, peft)
    (peft / "twinlora.json").unlink()
    assert recorded_base(peft)[0] == str(other_tiny_model.resolve())
    mlx = tmp_path / "mlx"
    mlx.mkdir()
    (mlx / "adapter_config.json").write_text(json.dumps({"model": str(other_tiny_model)}))
    assert recorded_base(mlx) == (str(other_tiny_model), str(other_tiny_model))
    assert recorded_base(tmp_path / "none") == (None, None)


def test_recorded_base_not_here_is_one_line(other_adapter, tmp_path):
    moved = tmp_path / "adapter"
    shutil.copytree(other_adapter, moved)
    for name, key in (("twinlora.json", "base_model"), ("adapter_config.json", None)):
        data = json.loads((moved / name).read_text())
        if key:
            data[key].update(name="../models/gone", path="/nonexistent/gone")
        else:
            data["base_model_name_or_path"] = "/nonexistent/gone"
        (moved / name).write_text(json.dumps(data))
    r = run_cli("generate", "--adapter", moved, "--prompt", "hi")
    line = expect_error(r)
    assert line == (f"error: {moved}: this adapter was trained on base '../models/gone', which is not here — fix: "
                    "pass --model with that base model's directory or hub id")
