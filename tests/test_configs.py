"""Every shipped config is valid, and each recipe's demo config trains on both backends
(on a tiny model standing in for the embedded one)."""
from __future__ import annotations

import pytest

from helpers import run_cli

from conftest import ROOT
from common.config.schema import load_config

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.output and cfg.data.train


def test_seed_configs_match_the_reference_setups():
    legi = load_config(ROOT / "configs/legi-qwen2.5-3b.yaml")
    assert (legi.lora.rank, legi.lora.alpha, legi.lora.dropout, legi.lora.target_modules, legi.lora.use_rslora) == (16, 32, 0.05, "all-linear", True)
    assert (legi.data.max_length, legi.training.batch_size, legi.training.grad_accumulation, legi.training.lr,
            legi.training.schedule, legi.training.warmup_ratio, legi.training.grad_checkpointing) == (256, 1, 8, 1e-4, "cosine", 0.05, True)
    slds = load_config(ROOT / "configs/slds-gemma3-4b.yaml")
    assert (slds.lora.rank, slds.lora.alpha, slds.lora.dropout, slds.model.quantize, slds.training.lr,
            slds.training.batch_size, slds.data.max_length) == (32, 16, 0.1, "4bit", 2e-4, 4, 8192)
    squad = load_config(ROOT / "configs/squad-llama3.2-1b.yaml")
    assert (squad.lora.rank, squad.lora.alpha, squad.lora.target_modules) == (8, 16, ["q_proj", "v_proj"])


RECIPES = {
    "legi-demo": ("legi", ROOT / "data/legi/LEGITEXT000031366350_crpa_sample.json", []),
    "slds-demo": ("slds", ROOT / "data/slds/synthetic.jsonl", ["--option", "max_length=100"]),  # tiny tokenizer: short
    "squad-demo": ("squad", ROOT / "data/squad/dev-v2.0-sample.json", []),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_demo_config_trains(tiny_model, tmp_path, name, backend):
    recipe, src, extra = RECIPES[name]
    data = tmp_path / "data"
    r = run_cli("prepare", recipe, src, "--out", data, *extra)
    assert r.exit_code == 0, r.output
    r = run_cli("train", "--config", ROOT / f"configs/{name}.yaml", "--backend", backend, "--model", tiny_model,
                "--data", data / "train.jsonl", "--valid", data / "valid.jsonl", "--steps", "2",
                "--set", "data.max_length=512", "--output", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run/adapter/adapter_model.safetensors").is_file()


def test_every_module_imports_without_a_backend_framework():
    """Byte-compile check of every module, and neither `common/` nor `jobs/` imports mlx or torch at
    module level (the backends load lazily, through backends.get_backend)."""
    import importlib
    import subprocess
    import sys
    mods = sorted({".".join(p.relative_to(ROOT).with_suffix("").parts)
                   for top in ("common", "jobs") for p in (ROOT / top).rglob("*.py")})
    code = ("import sys, importlib\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "bad = [m for m in ('mlx', 'mlx.core', 'torch') if m in sys.modules]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    for p in (ROOT / "backends").rglob("*.py"):
        compile(p.read_text(), str(p), "exec")
    importlib.import_module("cli")
