"""LoRA variants on both backends: rsLoRA and DoRA (recorded as PEFT records them, trained the same
on MLX and PyTorch), QLoRA (MLX 4-bit base; torch NF4 is in test_qlora.py), merging into a
quantized base, GGUF export, and switching between adapters on one loaded base."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import chat_rows, merge_quantized, run_cli, tiny_config, write_jsonl

from common.adapters.format import COMMON_WEIGHTS, load_adapter
from common.runs.run_dir import RunDir
from jobs.trainer import train

BACKENDS = ("mlx", "torch")
VARIANTS = {"rslora": {"use_rslora": True}, "dora": {"use_dora": True}}
IDS = np.array([[1, 9, 33, 120, 64, 5, 17, 80, 2, 7]], dtype=np.int32)
quiet = dict(echo=lambda *a, **k: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("vdata") / "train.jsonl"
    rows = chat_rows(12)
    write_jsonl(p, rows)
    return p


@pytest.fixture(scope="module")
def runs(tiny_model, data, tmp_path_factory) -> dict:
    """3 steps per variant and backend, same seed (so the same initial A/B)."""
    root = tmp_path_factory.mktemp("vruns")
    out = {}
    for variant, lora in VARIANTS.items():
        for be in BACKENDS:
            path = root / f"{variant}-{be}"
            summary = train(tiny_config(tiny_model, data, path, lora=lora, training={"steps": 3, "save_every": 0}),
                            be, **quiet)
            out[variant, be] = (path, summary)
    return out


def peft_logits(model_dir: Path, adapter: Path) -> np.ndarray:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)), str(adapter)).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(IDS).long()).logits.float().numpy()


def hf_logits(model_dir: Path, **kw) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kw).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(IDS).long()).logits.float().numpy()


def opened_logits(backend: str, model: Path, adapter: Path | None = None, **kw) -> np.ndarray:
    from jobs.session import open_model
    return open_model(backend, str(model), adapter=adapter, **kw).backend.logits(IDS)


# ------------------------------------------------------------------ rsLoRA / DoRA

@pytest.mark.parametrize("variant", VARIANTS)
def test_adapter_records_variant_as_peft_does(runs, variant):
    path = runs[variant, "mlx"][0] / "adapter"
    cfg = json.loads((path / "adapter_config.json").read_text())
    assert cfg["use_rslora"] is (variant == "rslora") and cfg["use_dora"] is (variant == "dora")
    spec, w, _ = load_adapter(path)
    mags = [k for k in w if k.endswith(".lora_magnitude_vector")]
    if variant == "dora":
        assert len(mags) == len([k for k in w if k.endswith("lora_A.weight")]) > 0
        assert all(w[k].shape == (w[k.replace("lora_magnitude_vector", "lora_B.weight")].shape[0],) for k in mags)
    else:
        assert not mags
    native = json.loads((path / "mlx" / "adapter_config.json").read_text())
    assert native["fine_tune_type"] == ("dora" if variant == "dora" else "lora")
    assert native["lora_parameters"]["scale"] == pytest.approx(spec.scale)
    if variant == "rslora":
        assert spec.scale == pytest.approx(spec.alpha / np.sqrt(spec.rank))
    # the mlx-native copy converts back to the very same tensors
    _, w_native, _ = load_adapter(path / "mlx")
    assert set(w_native) == set(w) and all(np.array_equal(w[k], w_native[k]) for k in w)


@pytest.mark.parametrize("variant", VARIANTS)
def test_peft_loads_mlx_trained_adapter(runs, tiny_model, variant):
    adapter = runs[variant, "mlx"][0] / "adapter"
    ref = peft_logits(tiny_model, adapter)
    assert np.abs(opened_logits("mlx", tiny_model, adapter) - ref).max() < 1e-4
    assert np.abs(opened_logits("mlx", tiny_model) - ref).max() > 1e-2  # the adapter does something


@pytest.mark.parametrize("variant", VARIANTS)
def test_mlx_loads_torch_trained_adapter(runs, tiny_model, variant):
    adapter = runs[variant, "torch"][0] / "adapter"
    ref = peft_logits(tiny_model, adapter)
    assert np.abs(opened_logits("mlx", tiny_model, adapter) - ref).max() < 1e-4
    assert np.abs(opened_logits("torch", tiny_model, adapter) - ref).max() < 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_curves_and_weights_agree(runs, variant):
    from jobs.parity import loss_curve_gap
    gap = loss_curve_gap(RunDir(runs[variant, "mlx"][0]).read_log(), RunDir(runs[variant, "torch"][0]).read_log())
    # measured: 2e-6 (DoRA), 7e-7 (rsLoRA) after 3 steps at lr 1e-2; float32 rounding only
    assert gap["steps"] == 3 and gap["max_abs_loss_gap"] < 1e-4
    _, a, _ = load_adapter(runs[variant, "mlx"][0] / "adapter")
    _, b, _ = load_adapter(runs[variant, "torch"][0] / "adapter")
    assert set(a) == set(b)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-4


def test_dora_optimizer_moments_of_magnitude(runs):
    """mlx's optimizer state names its moments "m"/"v" and DoRA's parameter is "m" too
    (`...q_proj.m.m`, `...q_proj.m.v`): the export must map them to the magnitude's moments."""
    moments = {}
    for be in BACKENDS:
        run = RunDir(runs["dora", be][0])
        _, opt, _ = run.load_checkpoint(run.checkpoint_dirs()[-1])
        moments[be] = opt
    assert set(moments["mlx"]) == set(moments["torch"])
    mag = [k for k in moments["mlx"] if ".lora_magnitude_vector::" in k]
    assert len(mag) == 2 * 14
    for k in moments["mlx"]:
        a, b = moments["mlx"][k], moments["torch"][k]
        assert a.shape == b.shape, k
        assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max() + 1e-12, k


def test_dora_resume_is_exact_on_mlx(runs, tiny_model, data, tmp_path):
    import shutil
    out = tmp_path / "r"
    cfg = tiny_config(tiny_model, data, out, lora=VARIANTS["dora"], training={"steps": 3, "save_every": 2})
    train(cfg, "mlx", **quiet)
    shutil.rmtree(out / "checkpoints" / "step-000003")
    shutil.rmtree(out / "adapter")
    train(cfg, "mlx", resume=True, **quiet)
    _, a, _ = load_adapter(out / "adapter")
    _, b, _ = load_adapter(runs["dora", "mlx"][0] / "adapter")
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_dora_magnitude_defaults_to_peft_init(runs, tiny_model, backend):
    """Weights without a magnitude (the shared init, or a LoRA adapter used to start DoRA) get
    PEFT's ‖W + s·BA‖: the DoRA model then equals the plain-LoRA model with the same A/B."""
    from dataclasses import replace

    from backends import get_backend
    from common.adapters.format import modules_for_adapter
    spec, w, _ = load_adapter(runs["rslora", "torch"][0] / "adapter")  # B != 0, no magnitude
    be = get_backend(backend)(tiny_model)
    modules = modules_for_adapter(spec, w, be.linear_modules(), "test")
    be.attach_lora(replace(spec, use_dora=True), modules, w)
    assert np.abs(be.logits(IDS) - peft_logits(tiny_model, runs["rslora", "torch"][0] / "adapter")).max() < 1e-4
    assert len([k for k in be.lora_weights() if k.endswith("magnitude_vector")]) == len(modules)


def test_mlx_dora_layer_follows_peft_formula_with_dropout():
    """With dropout active PEFT computes base(x) + (g-1)·W·drop(x) + g·s·BA·drop(x); mlx-lm's own
    DoRALinear computes g·(W x + s·BA·drop(x)). Ours must match PEFT (output and gradients)."""
    import mlx.core as mx
    import mlx.nn as nn
    import torch
    from mlx_lm.tuner.dora import DoRALinear
    from peft import LoraConfig, get_peft_model

    from backends.mlx.dora import PeftDoRALinear

    rng = np.random.default_rng(0)
    n_in, n_out, r, p = 16, 12, 4, 0.25
    W = rng.normal(0, 0.2, (n_out, n_in)).astype(np.float32)
    A, B = rng.normal(0, 0.3, (r, n_in)).astype(np.float32), rng.normal(0, 0.3, (n_out, r)).astype(np.float32)
    m = (np.linalg.norm(W, axis=1) * rng.uniform(0.8, 1.2, n_out)).astype(np.float32)
    x = rng.normal(0, 1, (3, n_in)).astype(np.float32)
    mask = (rng.uniform(size=x.shape) > p).astype(np.float32)
    R = rng.normal(0, 1, (3, n_out)).astype(np.float32)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(n_in, n_out, bias=False)

        def forward(self, x):
            return self.proj(x)

    class TorchMask(torch.nn.Module):
        def forward(self, x):
            return x * torch.from_numpy(mask) / (1 - p)

    net = Net()
    net.proj.weight.data = torch.from_numpy(W.copy())
    pm = get_peft_model(net, LoraConfig(r=r, lora_alpha=8, lora_dropout=p, target_modules=["proj"], use_dora=True))
    layer = pm.base_model.model.proj
    layer.lora_dropout["default"] = TorchMask()
    layer.lora_A["default"].weight.data = torch.from_numpy(A.copy())
    layer.lora_B["default"].weight.data = torch.from_numpy(B.copy())
    layer.lora_magnitude_vector["default"].weight.data = torch.from_numpy(m.copy())
    pm.train()
    yt = pm(torch.from_numpy(x))
    (yt * torch.from_numpy(R)).sum().backward()
    grads_t = {"lora_a": layer.lora_A["default"].weight.grad.numpy().T, "lora_b": layer.lora_B["default"].weight.grad.numpy().T,
               "m": layer.lora_magnitude_vector["default"].weight.grad.numpy()}

    class MlxMask(nn.Module):
        def __call__(self, x):
            return x * mx.array(mask) / (1 - p)

    def run(cls):
        lin = nn.Linear(n_in, n_out, bias=False)
        lin.weight = mx.array(W)
        lay = cls.from_base(lin, r=r, dropout=p, scale=2.0)
        lay.lora_a, lay.lora_b, lay.m = mx.array(A.T), mx.array(B.T), mx.array(m)
        lay.dropout = MlxMask()
        lay.train()
        lay.freeze()
        lay.unfreeze(keys=["lora_a", "lora_b", "m"], strict=False)
        loss = lambda model, x: (model(x) * mx.array(R)).sum()  # noqa: E731
        (_, grads) = nn.value_and_grad(lay, loss)(lay, mx.array(x))
        return np.array(lay(mx.array(x))), {k: np.array(v) for k, v in grads.items() if k != "linear"}

    y, grads = run(PeftDoRALinear)
    assert np.abs(y - yt.detach().numpy()).max() < 1e-5
    for k in grads_t:
        assert np.abs(grads[k] - grads_t[k]).max() < 1e-4, k
    y_stock, _ = run(DoRALinear)
    assert np.abs(y_stock - yt.detach().numpy()).max() > 1e-2  # why the subclass exists


# ------------------------------------------------------------------ QLoRA

@pytest.fixture(scope="module")
def mlx_4bit(runs, tiny_model, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "mlx-4bit"
    cfg = tiny_config(tiny_model, data, out, training={"steps": 3, "save_every": 0})
    cfg.model.quantize = "4bit"
    return out, train(cfg, "mlx", **quiet)


def test_mlx_4bit_training_saves_memory_and_adapter_loads_unquantized(mlx_4bit, runs, tiny_model):
    out, summary = mlx_4bit
    full = json.loads((runs["rslora", "mlx"][0] / "summary.json").read_text())
    assert summary["quantize"] == "4bit" and summary["final_loss"] < 6.0
    # packed 4-bit + fp scales/biases (the embedding stays fp32): 0.33x of the fp32 base here
    assert summary["base_weight_bytes"] < 0.4 * full["base_weight_bytes"]
    # the summary and the run's README state the saving against the same base unquantized (fp32)
    assert summary["base_weight_bytes_unquantized"] == full["base_weight_bytes"]
    assert summary["base_memory_saved_bytes"] == full["base_weight_bytes"] - summary["base_weight_bytes"]
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    assert (f"- base weights: {mib(summary['base_weight_bytes'])} in 4bit vs {mib(full['base_weight_bytes'])} "
            f"in float32: {mib(summary['base_memory_saved_bytes'])} saved\n") in (out / "README.md").read_text()
    adapter = out / "adapter"
    assert (adapter / COMMON_WEIGHTS).is_file() and (adapter / "mlx" / "adapters.safetensors").is_file()
    # the adapter is an ordinary PEFT adapter: on the unquantized base PEFT == MLX
    assert np.abs(peft_logits(tiny_model, adapter) - opened_logits("mlx", tiny_model, adapter)).max() < 1e-4


def test_merge_into_quantized_base(mlx_4bit, tiny_model, tmp_path):
    from jobs.session import open_model
    adapter = mlx_4bit[0] / "adapter"
    q = open_model("mlx", str(tiny_model), quantize="4bit", adapter=adapter)
    q_logits = q.backend.logits(IDS)
    q.backend.merge_and_save(tmp_path / "merged")
    cfg = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization" not in cfg and cfg["dtype"] == "float32"
    merged = hf_logits(tmp_path / "merged")
    # merged == dequantized base + adapter (what was trained) to float32 rounding ...
    assert np.abs(merged - q_logits).max() < 1e-4
    # ... and differs from the unquantized base + adapter by the base's 4-bit error, not more
    # (0.73 max |Δlogit| on this random tiny model; 12 on SmolLM2-135M, see the report)
    lost = np.abs(merged - opened_logits("mlx", tiny_model, adapter)).max()
    assert 1e-3 < lost < 5.0


def test_cli_merge_into_quantized_base_reports_precision_lost(mlx_4bit, tiny_model, tmp_path):
    """`merge --quantize 4bit`: de-quantized base + adapter saved in float32, and the precision the
    4-bit base lost, measured against the unquantized merge, printed and kept in twinlora_merge.json."""
    from transformers import AutoTokenizer

    from jobs.merge import probe_ids
    from jobs.parity import compare_logits
    adapter, out = mlx_4bit[0] / "adapter", tmp_path / "merged-q"
    lost = merge_quantized("mlx", tiny_model, adapter, out)
    # recomputed here: the merged model (transformers) against the unquantized base + adapter (MLX)
    import torch
    from transformers import AutoModelForCausalLM

    from jobs.session import open_model
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    full = open_model("mlx", str(tiny_model), adapter=adapter).backend
    worst = 0.0
    for ids in probe_ids(AutoTokenizer.from_pretrained(str(tiny_model))):
        with torch.no_grad():
            a = merged(input_ids=torch.tensor([ids])).logits.float().numpy()[0]
        worst = max(worst, compare_logits(a, full.logits(np.array([ids]))[0])["max_abs_logit_diff"])
    assert 1e-3 < lost["max_abs_logit_diff"] < 5.0 and abs(worst - lost["max_abs_logit_diff"]) < 1e-3
    # without --quantize the same adapter merges into the unquantized base, with a note
    r = run_cli("merge", "--backend", "mlx", "--model", tiny_model, "--adapter", adapter, "--output", tmp_path / "m2")
    assert r.exit_code == 0 and ("note: the adapter was trained on a mlx-nvfp4 base; merged into the unquantized "
                                 "base (the usual QLoRA merge). --quantize mlx-nvfp4 merges into") in r.output
    assert "precision_lost" not in json.loads((tmp_path / "m2" / "twinlora_merge.json").read_text())


# ------------------------------------------------------------------ GGUF

@pytest.fixture(scope="module")
def merged_dora(runs, tiny_model, tmp_path_factory):
    from jobs.merge import merge_adapter
    out = tmp_path_factory.mktemp("m") / "merged"
    merge_adapter("torch", str(tiny_model), str(runs["dora", "mlx"][0] / "adapter"), out)
    return out


@pytest.mark.parametrize("dtype,tol", [("f32", 1e-5), ("f16", 2e-2)])
def test_gguf_round_trip_llama(merged_dora, tmp_path, dtype, tol):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from common.adapters.gguf_export import export_gguf, permute
    out = export_gguf(merged_dora, tmp_path / f"model-{dtype}.gguf", dtype)
    assert out.is_file() and not list(tmp_path.glob(".*.tmp"))
    # logits: f32 is exact here (measured 0.0), f16 within 2e-3 on this model
    assert np.abs(hf_logits(tmp_path, gguf_file=out.name) - hf_logits(merged_dora)).max() < tol
    # llama.cpp's q/k permutation, metadata and tokenizer
    reader = GGUFReader(str(out))
    fields = {f.name: f for f in reader.fields.values()}
    cfg = json.loads((merged_dora / "config.json").read_text())
    f = lambda k: fields[k].contents()  # noqa: E731
    assert f("general.architecture") == "llama" and f("llama.block_count") == cfg["num_hidden_layers"]
    assert f("llama.attention.head_count_kv") == cfg["num_key_value_heads"]
    assert f("llama.rope.freq_base") == pytest.approx(cfg["rope_theta"])
    assert f("tokenizer.ggml.model") == "gpt2" and f("tokenizer.ggml.pre") == "gpt-2"
    assert f("tokenizer.ggml.eos_token_id") == cfg["eos_token_id"] and "im_start" in f("tokenizer.chat_template")
    tensors = {t.name: t for t in reader.tensors}
    assert {"token_embd.weight", "blk.1.attn_q.weight", "blk.1.ffn_down.weight", "output_norm.weight",
            "output.weight"} <= set(tensors)
    from safetensors.numpy import load_file
    hf = load_file(str(merged_dora / "model.safetensors"))
    k = np.array(tensors["blk.0.attn_k.weight"].data, dtype=np.float32).reshape(hf["model.layers.0.self_attn.k_proj.weight"].shape)
    assert np.allclose(k, permute(hf["model.layers.0.self_attn.k_proj.weight"], 4, 2), atol=1e-3)
    tok, back = AutoTokenizer.from_pretrained(str(merged_dora)), AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=out.name)
    text = "Le salarié a droit à un congé payé, article L3141-1 (2024) 🎉"
    assert tok(text)["input_ids"] == back(text)["input_ids"]
    msgs = [{"role": "user", "content": "Bonjour"}]
    assert (tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            == back.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))


def test_gguf_round_trip_qwen2_tied(tmp_path):
    from tiny_model import build_tiny_model

    from common.adapters.gguf_export import export_gguf
    model = build_tiny_model(tmp_path / "qwen", arch="qwen2", tie=True)
    out = export_gguf(model, tmp_path / "g" / "qwen.gguf")
    assert np.abs(hf_logits(out.parent, gguf_file=out.name) - hf_logits(model)).max() < 1e-5


def test_gguf_refuses_unsupported(tmp_path, merged_dora):
    import shutil

    from common.errors import UserError
    from common.adapters.gguf_export import export_gguf
    with pytest.raises(UserError, match="f32, f16, bf16 or q8_0"):
        export_gguf(merged_dora, tmp_path / "x.gguf", "q4_0")
    other = tmp_path / "other"
    shutil.copytree(merged_dora, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="not MistralForCausalLM"):
        export_gguf(other, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


# ------------------------------------------------------------------ several adapters, one base

@pytest.mark.parametrize("backend", BACKENDS)
def test_switch_adapters_without_reloading_base(runs, tiny_model, backend):
    from jobs.session import add_adapter, eos_ids, open_model
    a = runs["rslora", "torch"][0] / "adapter"          # all-linear, rsLoRA
    b = runs["dora", "mlx"][0] / "adapter"              # all-linear, DoRA
    o = open_model(backend, str(tiny_model), adapter=a)
    add_adapter(o, "b", b)
    be, stops, prompt = o.backend, eos_ids(o.tokenizer), [int(t) for t in IDS[0]]
    base_ids = {id(v) for v in _base_arrays(be)}

    out = {}
    for name in ("default", "b", "default"):
        be.set_active_adapter(name)
        out.setdefault(name, []).append((be.logits(IDS), be.generate(prompt, 8, stops)))
    (la1, ga1), (la2, ga2) = out["default"]
    lb, gb = out["b"][0]
    assert np.array_equal(la1, la2) and ga1 == ga2
    fresh_b = open_model(backend, str(tiny_model), adapter=b).backend
    assert np.abs(lb - fresh_b.logits(IDS)).max() < 1e-6 and gb == fresh_b.generate(prompt, 8, stops)
    assert np.abs(la1 - opened_logits(backend, tiny_model, a)).max() < 1e-6
    assert np.abs(la1 - lb).max() > 1e-2
    assert {id(v) for v in _base_arrays(be)} == base_ids  # the base was not reloaded or copied


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_generate_with_several_adapters(runs, tiny_model, backend):
    """`generate --adapter a=DIR --adapter DIR2`: each adapter's answer over one loaded base equals
    what `generate` gives with that adapter alone."""
    a = runs["rslora", "torch"][0] / "adapter"
    b = runs["dora", "mlx"][0] / "adapter"
    common = ["generate", "--backend", backend, "--model", tiny_model, "--template", "raw",
              "--max-new-tokens", "6", "--prompt", "Que dit", "--prompt", "L'article"]
    both = run_cli(*common, "--adapter", f"first={a}", "--adapter", b)
    assert both.exit_code == 0, both.output
    label_b = b.parent.name  # a run's adapter/ is named after its run directory
    alone = {label: run_cli(*common, "--adapter", path) for label, path in (("first", a), (label_b, b))}
    for label, r in alone.items():
        assert r.exit_code == 0, r.output
        answers = r.output.split(">>> ")[1:]  # one block per prompt
        for answer in answers:
            assert f">>> [{label}] {answer}" in both.output
    assert both.output.count(">>> [") == 4 and alone["first"].output != alone[label_b].output
    same = run_cli(*common, "--adapter", a, "--adapter", a)
    assert same.exit_code == 2 and "error: --adapter: two --adapter values have the same name" in same.output


def _base_arrays(be):
    if be.name == "torch":
        return [p for n, p in be.peft.named_parameters() if "lora_" not in n]
    return [m.weight for m in be._base_layers.values()]
