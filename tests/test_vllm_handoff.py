"""`serve --engine vllm`: the preflight names every reason vLLM would refuse an adapter (rank over
max_lora_rank, DoRA, unsupported targets, bias, mlx-lm layout, another base) in one line, and
`--print-command` prints the exact `vllm serve` command."""
from __future__ import annotations

import json
import shutil

import pytest

from helpers import chat_rows, run_cli, tiny_config, write_jsonl


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    from jobs.trainer import train
    root = tmp_path_factory.mktemp("vllm")
    data = write_jsonl(root / "train.jsonl", chat_rows(4))
    train(tiny_config(tiny_model, data, root / "run", training={"steps": 1}), "torch", echo=lambda *a, **k: None)
    return root / "run" / "adapter"


def variant(adapter, tmp_path, name, **config):
    d = tmp_path / name
    shutil.copytree(adapter, d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(config)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


def test_print_command(tiny_model, adapter):
    r = run_cli("serve", "--engine", "vllm", "--print-command", "--model", tiny_model, "--adapter", f"legal={adapter}",
                "--adapter", f"other={adapter}", "--port", "9000", "--max-lora-rank", "8", "--api-key", "k")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1] == (f"vllm serve {tiny_model} --enable-lora --lora-modules legal={adapter} "
                                         f"other={adapter} --max-lora-rank 8 --max-loras 2 --host 127.0.0.1 "
                                         "--port 9000 --api-key k")


def test_preflight_lists_every_problem(tiny_model, other_tiny_model, adapter, tmp_path):
    from jobs.vllm_handoff import preflight
    big = variant(adapter, tmp_path, "big", r=64)
    dora = variant(adapter, tmp_path, "dora", use_dora=True)
    embed = variant(adapter, tmp_path, "embed", target_modules=["q_proj", "embed_tokens", "lm_head"])
    bias = variant(adapter, tmp_path, "bias", bias="all")
    mlx = tmp_path / "mlx"
    assert run_cli("convert", adapter, mlx, "--to", "mlx").exit_code == 0
    named = [("ok", str(adapter)), ("big", str(big)), ("dora", str(dora)), ("embed", str(embed)),
             ("bias", str(bias)), ("mlx", str(mlx))]
    assert preflight(named, str(tiny_model), tiny_model, 16) == [
        "big: rank 64 > --max-lora-rank 16",
        "dora: DoRA (use_dora), which vLLM does not serve (cli.py merge folds it into the base)",
        "embed: target modules embed_tokens, lm_head (vLLM serves LoRA on down_proj, gate_proj, k_proj, o_proj, "
        "q_proj, up_proj, v_proj)",
        "bias: bias or modules_to_save, which vLLM does not serve",
        f"mlx: in mlx-lm's layout, and vLLM reads PEFT adapters (cli.py convert {mlx} OUT --to common)"]
    assert preflight([("big", str(big))], str(tiny_model), tiny_model, 64) == []
    assert preflight([], "m", None, 12) == ["--max-lora-rank 12 is not one vLLM accepts (1, 8, 16, 32, 64, 128, 256, 320, 512)"]
    other = preflight([("ok", str(adapter))], str(other_tiny_model), other_tiny_model, 16)
    assert len(other) == 1 and other[0].startswith(f"ok: adapter was trained on base {tiny_model}")
    # a hub id not downloaded here: the base is checked by the name the adapter records
    assert preflight([("ok", str(adapter))], "org/other", None, 16) == [f"ok: trained on base {tiny_model}, not org/other"]
