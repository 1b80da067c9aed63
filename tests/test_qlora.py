"""QLoRA on the torch backend without a GPU: bitsandbytes NF4 + double quantization on CPU trains,
resumes exactly, merges into the de-quantized base (reporting the precision lost), states its
memory saving, and writes an adapter that plain PEFT loads over a plain bitsandbytes base.
Tiny models only: bitsandbytes on CPU is slow."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import chat_rows, merge_quantized, run_cli, tiny_config, write_jsonl

from common.adapters.format import load_adapter
from common.runs.run_dir import RunDir
from jobs.trainer import train

pytest.importorskip("bitsandbytes")

IDS = np.array([[1, 9, 33, 120, 64, 5, 17, 80, 2, 7]], dtype=np.int32)
STEPS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("qdata") / "train.jsonl", chat_rows(12))


def q_config(tiny_model, data, out):
    cfg = tiny_config(tiny_model, data, out, training={"steps": STEPS, "save_every": 2})
    cfg.model.quantize = "4bit"
    return cfg


@pytest.fixture(scope="module")
def nf4_run(tiny_model, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("qrun") / "torch-nf4"
    lines = []
    summary = train(q_config(tiny_model, data, out), "torch", echo=lines.append)
    return out, summary, lines


def torch_logits(model) -> np.ndarray:
    import torch
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(IDS).long()).logits.float().numpy()


def plain_bnb_base(model_dir: Path):
    """The base as a user would load it: transformers + BitsAndBytesConfig, no twinlora code."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=q, device_map={"": "cpu"},
                                                dtype=torch.float32)


def test_nf4_double_quant_trains_on_cpu_and_states_memory(nf4_run, tiny_model):
    from transformers import AutoModelForCausalLM

    from jobs.session import open_model
    out, summary, lines = nf4_run
    losses = [r["loss"] for r in RunDir(out).read_log() if r.get("event") == "train"]
    assert len(losses) == STEPS and losses[-1] < losses[0] - 0.5  # it learns (6.14 -> 4.75 here)
    assert any("note: bitsandbytes NF4 + double quant (as in the QLoRA paper) (nf4-dq) on CPU" in line
               and "slower" in line for line in lines)
    # the base really is NF4 with double quantization (quantized absmax), on the CPU
    be = open_model("torch", str(tiny_model), quantize="4bit").backend
    quantized = [m for m in be.model.modules() if type(m).__name__ == "Linear4bit"]
    assert len(quantized) == 14 and be.device == "cpu"
    assert all(m.weight.quant_state.quant_type == "nf4" and m.weight.quant_state.nested for m in quantized)
    # memory fields: packed 4-bit base (+ fp32 embeddings, norms) against the same base in float32
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(tiny_model)).parameters())
    assert summary["quantize"] == "4bit" and summary["base_weight_bytes_unquantized"] == 4 * n_params
    linear = sum(int(np.prod(m.weight.quant_state.shape)) for m in quantized)
    assert summary["base_weight_bytes"] == 4 * (n_params - linear) + linear // 2  # 4 bits per linear weight
    assert summary["base_memory_saved_bytes"] == 4 * n_params - summary["base_weight_bytes"]
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    assert (f"- base weights: {mib(summary['base_weight_bytes'])} in 4bit vs {mib(4 * n_params)} in float32: "
            f"{mib(summary['base_memory_saved_bytes'])} saved\n") in (out / "README.md").read_text()


def test_nf4_resume_is_exact(nf4_run, tiny_model, data, tmp_path):
    out = tmp_path / "resumed"
    cfg = q_config(tiny_model, data, out)
    train(cfg, "torch", echo=lambda *a: None)
    shutil.rmtree(out / "checkpoints" / f"step-{STEPS:06d}")  # as if killed after the step-2 checkpoint
    shutil.rmtree(out / "adapter")
    train(cfg, "torch", resume=True, echo=lambda *a: None)
    _, a, _ = load_adapter(out / "adapter")
    _, b, _ = load_adapter(nf4_run[0] / "adapter")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)  # bit-identical
    assert [r["step"] for r in RunDir(out).read_log() if r.get("event") == "train"] == [1, 2, 3, 4]


def test_merge_into_dequantized_nf4_base_reports_precision_lost(nf4_run, tiny_model, tmp_path):
    """`merge --backend torch --quantize 4bit`: dequant(NF4(W)) + adapter saved in float32 (what the
    adapter was trained against), and the precision lost against the unquantized merge."""
    from transformers import AutoModelForCausalLM

    from jobs.merge import probe_ids
    from jobs.parity import compare_logits
    from jobs.session import open_model
    adapter, out = nf4_run[0] / "adapter", tmp_path / "merged"
    lost = merge_quantized("torch", tiny_model, adapter, out)
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["dtype"] == "float32"
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    # the merged float model == the NF4 base + adapter it was trained on, to float32 rounding
    q = open_model("torch", str(tiny_model), quantize="4bit", adapter=adapter).backend
    assert np.abs(torch_logits(merged) - q.logits(IDS)).max() < 1e-4
    # the reported loss, recomputed: merged model against the unquantized base + adapter
    full = open_model("torch", str(tiny_model), adapter=adapter).backend
    import torch
    worst = 0.0
    for ids in probe_ids(open_model("torch", str(tiny_model)).tokenizer):
        with torch.no_grad():
            a = merged(input_ids=torch.tensor([ids])).logits.float().numpy()[0]
        worst = max(worst, compare_logits(a, full.logits(np.array([ids]))[0])["max_abs_logit_diff"])
    assert 1e-3 < lost["max_abs_logit_diff"] < 5.0 and abs(worst - lost["max_abs_logit_diff"]) < 1e-4


def test_plain_peft_loads_the_adapter_over_a_plain_bnb_base(nf4_run, tiny_model):
    from peft import PeftModel

    from jobs.session import open_model
    adapter = nf4_run[0] / "adapter"
    ours = open_model("torch", str(tiny_model), quantize="4bit", adapter=adapter).backend.logits(IDS)
    model = PeftModel.from_pretrained(plain_bnb_base(tiny_model), str(adapter))
    # training-mode forward (dropout is 0): bitsandbytes de-quantizes and multiplies in float32, as we do
    model.train()
    assert np.abs(torch_logits(model) - ours).max() < 1e-5
    # eval mode: on CPUs with AVX512-BF16 bitsandbytes switches to a bf16 inference kernel (why the
    # backend keeps the float32 path): close, not equal
    model.eval()
    assert np.abs(torch_logits(model) - ours).max() < 0.1
    # and the adapter changed the model: without it the logits differ by far more
    assert np.abs(opened_base_logits(tiny_model) - ours).max() > 0.1


def opened_base_logits(tiny_model) -> np.ndarray:
    from jobs.session import open_model
    return open_model("torch", str(tiny_model), quantize="4bit").backend.logits(IDS)


# ------------------------------------------------------------------ QLoRA across backends

@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_dequantized_base_is_what_the_4bit_model_computes(backend, nf4_run, tiny_model, tmp_path):
    """The shared weights of `parity --quantize` are exactly the backend's 4-bit base: the written
    float model (+ adapter) gives the 4-bit model's logits, on either backend."""
    from jobs.qparity import dequantized_base
    from jobs.session import open_model
    adapter = nf4_run[0] / "adapter"
    base = dequantized_base(backend, str(tiny_model), tmp_path / "deq")
    q = open_model(backend, str(tiny_model), quantize="4bit", adapter=adapter).backend.logits(IDS)
    for other in ("mlx", "torch"):
        plain = open_model(other, str(base), adapter=adapter, allow_base_mismatch=True).backend.logits(IDS)
        assert np.abs(plain - q).max() < 1e-4, other


def test_parity_on_qlora_reports_quantization_error_and_checks_same_weights(nf4_run, tiny_model, tmp_path):
    from jobs.parity import PROMPTS, compare_logits, prompt_ids
    from jobs.session import open_model
    adapter = nf4_run[0] / "adapter"
    r = run_cli("parity", "--model", tiny_model, "--adapter", adapter, "--quantize", "4bit",
                "--max-new-tokens", "4", "--output", tmp_path / "parity.json", "--runs", nf4_run[0], nf4_run[0])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "parity.json").read_text())
    q = rep["quantization"]
    # each backend's 4-bit error is real (the quantizers differ, so do their errors) ...
    for b in ("mlx", "torch"):
        assert 1e-2 < q[b]["max_abs_logit_diff"] < 5.0 and f"quantization error, {b}" in r.output
    assert q["mlx_4bit_vs_torch_nf4"]["max_abs_logit_diff"] > 1e-2
    # ... recomputed here for torch: NF4 base + adapter against the float base + adapter
    qt = open_model("torch", str(tiny_model), quantize="4bit", adapter=adapter)
    ft = open_model("torch", str(tiny_model), adapter=adapter).backend
    rows = [compare_logits(qt.backend.logits(np.array([i]))[0], ft.logits(np.array([i]))[0])
            for i in prompt_ids(qt.tokenizer, PROMPTS)]
    assert abs(max(x["max_abs_logit_diff"] for x in rows) - q["torch"]["max_abs_logit_diff"]) < 1e-6
    # ... while on the same de-quantized weights the two backends agree to fp32 parity
    assert sorted(rep["same_weights"]) == ["mlx", "torch"] and rep["pass"] is True
    for src, same in rep["same_weights"].items():
        assert same["max_abs_logit_diff"] < 1e-4 and same["same_greedy_text"], src
    assert rep["loss_curves"]["steps"] == STEPS and rep["loss_curves"]["max_abs_loss_gap"] == 0.0  # a run vs itself
    # ... and every model.quantize scheme's base damage, each on its backend (issue 33)
    from common.models.quantize import SCHEMES
    sch = rep["schemes"]
    assert list(sch) == list(SCHEMES) and all(sch[n]["backend"] == SCHEMES[n].backend for n in sch)
    for n, d in sch.items():
        assert 0 <= d["mean_kl"] < 1 and 0 <= d["argmax_agree"] <= 1 and d["source"] == "parity prompt", n
        assert f"base damage, {d['backend']} {n}: mean KL {d['mean_kl']:.3g}" in r.output
    assert sch["mlx-affine-8-g64"]["mean_kl"] < sch["mlx-affine-4-g64"]["mean_kl"] / 4
    assert sch["int8"]["mean_kl"] < sch["nf4"]["mean_kl"] / 4
    assert r.output.strip().endswith("PARITY: PASS")


def test_ddp_over_an_nf4_base_on_cpu_equals_one_process(tiny_model, data, tmp_path):
    """`train --nproc 2` (DDP over gloo), each process holding the NF4 base: the adapter of one
    process with the same global batch (2 micro-batches), up to the fp32 summation order."""
    import os
    import subprocess
    import sys

    from conftest import ROOT
    one = tmp_path / "one"
    cfg = tiny_config(tiny_model, data, one, training={"steps": 2, "grad_accumulation": 2, "save_every": 0})
    cfg.model.quantize = "4bit"
    train(cfg, "torch", echo=lambda *a: None)
    two = tmp_path / "two"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--backend", "torch", "--model", str(tiny_model),
                        "--data", str(data), "--output", str(two), "--steps", "2", "--nproc", "2",
                        "--set", "model.quantize=4bit", "--set", "training.grad_accumulation=2",
                        "--set", "lora.target_modules=all-linear", "--set", "training.save_every=0",
                        "--set", "training.lr=1e-2", "--set", "training.batch_size=2", "--set", "data.max_length=128"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "data parallel: 2 processes" in r.stdout
    _, a, _ = load_adapter(one / "adapter")
    _, b, _ = load_adapter(two / "adapter")
    assert sorted(a) == sorted(b) and max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5
    assert max(float(np.abs(a[k]).max()) for k in a if "lora_B" in k) > 1e-3  # it trained
