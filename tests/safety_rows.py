"""docs/errors.md rows E57-E99 (issue 14): outputs we own, output == input, locks, --resume and
--init-adapter checks, non-finite weights, SIGTERM, sandboxed templates, pickles, manifests, and
the inputs that used to end in a traceback. Registered through tests/error_rows.py; tests/test_errors.py runs every row
through the same checks (one `error:` line, exit 2, no traceback, the documented pattern)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import ROOT
from helpers import run_cli, write_jsonl
from ownership_helpers import _wait_for, snapshot, user_dir
from error_rows import _nth_call_patch, bad_data, expect_error, generate_cli, model_copy, no_hidden_leftovers, refused, row, train_cli, train_config, train_model, write


# ---------------------------------------------------------------- outputs we own

@row("E57")
def output_dir_not_a_run(ctx):
    mine = user_dir(ctx.out)
    before = snapshot(mine)
    lines = {flag: expect_error(train_cli(ctx, *([flag] if flag else [])), str(mine), "not a twinlora run",
                                f"{mine.name}-2")
             for flag in ("", "--overwrite", "--resume")}
    assert len(set(lines.values())) == 1, lines  # the same refusal whatever the flag
    assert snapshot(mine) == before
    assert sorted(p.name for p in ctx.tmp.iterdir() if p.name.startswith(".")) == []  # no staging, no lock left
    return lines["--overwrite"]


@row("E58")
def output_path_empty(ctx):
    mine = user_dir(ctx.tmp / "cwd")
    before = snapshot(mine)
    ctx.mp.chdir(mine)
    r = run_cli("train", "--backend", "torch", "--model", ctx.model, "--data", ctx.data, "--output", "", "--overwrite")
    line = expect_error(r, "--output", "the output path is empty")
    assert snapshot(mine) == before
    return line


@row("E59")
def output_is_the_input(ctx):
    model = ctx.tmp / "model"
    shutil.copytree(ctx.model, model)
    before = snapshot(model)
    adapter = ctx.adapter_copy()
    line = expect_error(run_cli("merge", "--adapter", adapter, "--model", model, "--output", model),
                        f"--output {model}", f"would replace the input {model}")
    conv = expect_error(run_cli("convert", adapter, adapter, "--to", "mlx"), f"would replace the input {adapter}")
    assert "DST" in conv
    # an output that holds the input (replacing it would delete the input) is refused too
    expect_error(run_cli("convert", adapter, ctx.tmp, "--to", "mlx"), "would replace the input")
    assert snapshot(model) == before and (adapter / "twinlora.json").is_file()
    return line


@row("E60")
def output_exists_not_ours(ctx):
    adapter = ctx.adapter_copy()
    mine = user_dir(ctx.tmp / "mine")
    before = snapshot(mine)
    line = expect_error(run_cli("convert", adapter, mine, "--to", "mlx"), f"DST {mine}",
                        "is not an adapter written by twinlora", "mine-2")
    for args in (["merge", "--adapter", adapter, "--model", ctx.model, "--output", mine],
                 ["eval", "--backend", "torch", "--model", ctx.model, "--data", ctx.data, "--output", mine],
                 ["prepare", "jsonl", ctx.data, "--out", mine]):
        r = run_cli(*args)
        expect_error(r, "exists and is not a", "choose a new name")
        assert "[eval]" not in r.output  # refused before generating
    assert snapshot(mine) == before
    return line


@row("E61")
def output_dir_is_a_file(ctx):
    f = write(ctx.tmp / "out.txt", "mine")
    adapter = ctx.adapter_copy()
    line = expect_error(run_cli("eval", "--backend", "torch", "--model", ctx.model, "--data", ctx.data,
                                "--output", f), f"--output {f}", "is a file, not a directory")
    for args in (["merge", "--adapter", adapter, "--model", ctx.model, "--output", f],
                 ["convert", adapter, f, "--to", "mlx"]):
        expect_error(run_cli(*args), "is a file, not a directory")
    ev = ctx.tmp / "eval-a"
    write(ev / "metrics.json", json.dumps({"metrics": {"rouge1_f": 0.5}}))
    expect_error(run_cli("compare", ev, ev, "--output", f), "is a file, not a directory")
    assert f.read_text() == "mine" and not list(ctx.tmp.glob(".out.txt*"))
    return line


@row("E62")
def gguf_output_not_ours(ctx):
    mine = write(ctx.tmp / "other.gguf", "not a gguf")
    line = expect_error(run_cli("export-gguf", ctx.model, mine), f"OUT_FILE {mine}", "exists and was not written by twinlora")
    assert mine.read_text() == "not a gguf"
    return line


# ---------------------------------------------------------------- one writer per run

@row("E63")
def run_directory_locked(ctx):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket
        lock = ctx.tmp / f".{ctx.out.name}.lock"
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": time.time()}))
        r = train_cli(ctx)
        line = expect_error(r, str(ctx.out), "another training is using this run directory", f"pid {holder.pid}",
                            str(lock))
        assert not ctx.out.exists() and "backend=torch" not in r.output  # refused before the model loads
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and the next run takes it over, then releases it
    r = train_cli(ctx)
    assert r.exit_code == 0, r.output
    assert not lock.exists()
    return line


@row("E160")
def output_locked_by_another_command(ctx):
    """`study` into a directory another live study is writing: refused after planning, nothing written."""
    from common.config.schema import dump_yaml
    from common.runs.lock import OutputLock
    from helpers import tiny_config
    cfg = tiny_config(ctx.model, ctx.data, ctx.tmp / "unused", data={"valid": str(ctx.data), "test": str(ctx.data)})
    config = write(ctx.tmp / "study.yaml", dump_yaml(cfg))
    with OutputLock(ctx.out) as held:
        r = run_cli("study", "--config", config, "--backend", "torch", "--no-forgetting", "--output", ctx.out)
    line = refused(ctx, r, str(ctx.out), "another twinlora process is writing this output", f"pid {held.record['pid']}")
    assert ".lock" not in line and "[study]" not in r.output
    return line


@row("E173")
def bench_into_a_user_folder(ctx):
    """bench claims its output as every command does (common.runs.lock.claim_output): a folder of the
    user's is refused before anything runs; a bench directory of ours (bench.json, longseq.json, or
    the marker an interrupted bench leaves in work/) is written again."""
    from common.runs.ownership import BENCH_MARKER, check_output_dir
    home = user_dir(ctx.tmp / "home")
    before = snapshot(home)
    r = run_cli("bench", "--model", ctx.model, "--steps", "1", "--backend", "torch", "--output", home)
    line = expect_error(r, f"--output {home}", "is not a twinlora bench directory")
    assert snapshot(home) == before and "[bench]" not in r.output
    interrupted = ctx.tmp / "interrupted"
    write(interrupted / BENCH_MARKER, "{}")
    assert check_output_dir(interrupted, "bench", "--output") is True
    return line


# ---------------------------------------------------------------- --resume / --init-adapter

@row("E161")
def resume_without_a_run(ctx):
    return refused(ctx, train_cli(ctx, "--resume"), str(ctx.out), "there is no run here to continue")


@row("E162")
def study_interrupted_says_run_it_again(ctx):
    from common.config.schema import dump_yaml
    from helpers import tiny_config

    def interrupt(orig, self, batch):
        raise KeyboardInterrupt
    _nth_call_patch(ctx, 2, interrupt)
    cfg = tiny_config(ctx.model, ctx.data, ctx.tmp / "unused", data={"valid": str(ctx.data), "test": str(ctx.data)},
                      training={"save_every": 1})
    config = write(ctx.tmp / "study.yaml", dump_yaml(cfg))
    r = run_cli("study", "--config", config, "--backend", "torch", "--no-forgetting", "--variability-items", "0",
                "--test-items", "2", "--curve-items", "2", "--max-new-tokens", "2", "--n-boot", "100", "--output", ctx.out)
    line = expect_error(r, str(ctx.out / "torch" / "run" / "checkpoints" / "step-000001"), "run the same study command again")
    assert "--resume" not in r.output
    return line


@row("E180")
def resume_quantized_run_on_the_other_backend(ctx):
    """A float run resumes on the other backend; a 4-bit one is refused (another quantizer), untouched."""
    args = ("--set", "model.quantize=4bit", "--set", "training.save_every=1")
    assert train_cli(ctx, *args, steps="1", backend="mlx").exit_code == 0
    before = snapshot(ctx.out)
    line = expect_error(train_cli(ctx, *args, "--resume", steps="2", backend="torch"), str(ctx.out / "checkpoints"),
                        "trained on mlx against a 4bit base", "bitsandbytes NF4", "--backend mlx")
    assert snapshot(ctx.out) == before
    return line


@row("E64")
def resume_with_changed_settings(ctx):
    args = ("--set", "training.save_every=1")
    assert train_cli(ctx, *args, steps="2").exit_code == 0
    before = snapshot(ctx.out)
    line = expect_error(train_cli(ctx, *args, "--resume", "--rank", "4", "--lr", "0.5", steps="2"),
                        "--resume would change what the checkpoint was trained with",
                        "lora.rank: 8 → 4", "training.lr: 0.0001 → 0.5")
    data2 = write(ctx.tmp / "train2.jsonl", ctx.data.read_text().replace("droit", "devoir"))
    expect_error(train_cli(ctx, *args, "--resume", data=data2, steps="2"), "data.train: ")
    ctx.data.write_text(ctx.data.read_text().replace("droit", "devoir"))  # same path, other content
    expect_error(train_cli(ctx, *args, "--resume", steps="2"), "content of data.train (sha256")
    assert snapshot(ctx.out) == before  # config.yaml, log and checkpoints untouched
    return line


@row("E65")
def init_adapter_spec_mismatch(ctx):
    adapter = ctx.adapter_copy()  # r=8, alpha=16, all-linear
    line = expect_error(train_cli(ctx, "--init-adapter", adapter, "--rank", "4"), str(adapter),
                        "--init-adapter's LoRA settings differ from the config", "rank: adapter 8 vs config 4")
    for extra, needle in ((("--set", "lora.alpha=32"), "alpha: adapter 16.0 vs config 32.0"),
                          (("--set", "lora.use_rslora=true"), "use_rslora"),
                          (("--set", "lora.target_modules=[q_proj]"), "target_modules"),
                          (("--set", "lora.layers=1"), "layers: adapter None vs config [1]")):
        for backend in ("torch", "mlx"):
            expect_error(train_cli(ctx, "--init-adapter", adapter, "--set", "lora.target_modules=all-linear", *extra,
                                   backend=backend), needle)
    expect_error(train_cli(ctx, "--init-adapter", adapter, "--set", "lora.target_modules=all-linear",
                           "--set", "lora.use_dora=true"), "use_dora: adapter False vs config True")
    assert not ctx.out.exists()
    return line


# ---------------------------------------------------------------- non-finite weights, adam_eps, SIGTERM

@row("E66")
def non_finite_weights_never_checkpointed(ctx):
    from backends.torch.backend import Backend
    from common.runs.run_dir import RunDir
    orig, calls = Backend.lora_weights, {"n": 0}

    def poisoned(self):
        w = orig(self)
        calls["n"] += 1
        if calls["n"] >= 3:  # from the 3rd checkpoint on, the weights hold NaN (as adam_eps=0 made them)
            k = sorted(w)[0]
            w[k] = np.full_like(w[k], np.nan)
        return w
    ctx.mp.setattr(Backend, "lora_weights", poisoned)
    good = ctx.out / "checkpoints" / "step-000002"
    line = expect_error(train_cli(ctx, "--set", "training.save_every=1", steps="5"),
                        "became non-finite (NaN/inf) at step 3", f"Last good checkpoint: {good}")
    run = RunDir(ctx.out)
    assert [p.name for p in run.checkpoint_dirs()] == ["step-000001", "step-000002"]
    weights, _, _ = run.load_checkpoint(good)
    assert all(np.isfinite(w).all() for w in weights.values())
    no_hidden_leftovers(ctx.out)
    return line


@row("E67")
def adam_eps_not_positive(ctx):
    line = expect_error(train_cli(ctx, "--set", "training.adam_eps=0"), "training.adam_eps must be > 0")
    expect_error(train_cli(ctx, "--set", "training.adam_eps=-1"), "training.adam_eps must be > 0")
    assert not ctx.out.exists()
    return line


@row("E68")
def sigterm_saves_and_resumes(ctx):
    from common.runs.run_dir import RunDir
    cmd = [sys.executable, "cli.py", "train", "--backend", "torch", "--model", str(ctx.model), "--data", str(ctx.data),
           "--output", str(ctx.out), "--steps", "6", "--set", "training.save_every=0"]
    env = {**os.environ, "TWINLORA_TEST_STEP_DELAY": "0.5"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = ctx.out / "log.jsonl"
    assert _wait_for(lambda: log.is_file() and '"step": 2' in log.read_text()), "training never reached step 2"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    ckpts = RunDir(ctx.out).checkpoint_dirs()
    assert len(ckpts) == 1 and 2 <= int(ckpts[0].name[5:]) < 6, ckpts  # progress saved (save_every=0)
    assert not (ctx.out / f"../.{ctx.out.name}.lock").exists()
    r = train_cli(ctx, "--set", "training.save_every=0", "--resume", steps="6")
    assert r.exit_code == 0 and f"resuming at step {int(ckpts[0].name[5:])}" in r.output, r.output
    assert [x["step"] for x in RunDir(ctx.out).read_log() if x.get("event") == "train"] == [1, 2, 3, 4, 5, 6]
    return lines[0]


# ---------------------------------------------------------------- sandboxing and pickles

@row("E69")
def template_escapes_sandbox(ctx):
    marker = ctx.tmp / "pwned"
    evil = write(ctx.tmp / "evil.jinja",
                 "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}")
    r = run_cli("prepare", "slds", ROOT / "data" / "slds" / "synthetic.jsonl", "--out", ctx.out,
                "--option", f"system_template={evil}")
    line = expect_error(r, str(evil), "sandbox refuses")
    assert not marker.exists() and not ctx.out.exists()
    return line


@row("E70")
def pickle_beside_odd_safetensors(ctx):
    d = model_copy(ctx)
    (d / "model.safetensors").rename(d / "weights.safetensors")
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle would run code here")
    r = train_model(ctx, d)
    return refused(ctx, r, str(d), "pickle weights (pytorch_model.bin)", "rename the weights to model.safetensors")


@row("E93")
def safetensors_not_named_model(ctx):
    d = model_copy(ctx)
    (d / "model.safetensors").rename(d / "weights.safetensors")
    r = run_cli("train", "--backend", "mlx", "--model", d, "--data", ctx.data, "--output", ctx.out)
    return refused(ctx, r, str(d), "(weights.safetensors) are not named model.safetensors")


@row("E71")
def bertscore_encoder_pickle(ctx):
    enc = ctx.tmp / "encoder"
    enc.mkdir()
    write(enc / "config.json", json.dumps({"model_type": "bert", "num_hidden_layers": 2}))
    (enc / "pytorch_model.bin").write_bytes(b"\x80\x04 pickle")
    r = run_cli("eval", "--backend", "torch", "--model", ctx.model, "--data", ctx.data, "--output", ctx.out,
                "--metrics", "bertscore", "--bertscore-encoder", enc)
    line = expect_error(r, str(enc), "only pickle weights found (pytorch_model.bin)")
    assert "[eval]" not in r.output and not ctx.out.exists()
    return line


@row("E72")
def manifest_hash_mismatch(ctx):
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(20)]
    src = write_jsonl(ctx.tmp / "src.jsonl", rows)
    prepared = ctx.tmp / "prepared"
    assert run_cli("prepare", "jsonl", src, "--out", prepared).exit_code == 0
    train = prepared / "train.jsonl"
    train.write_text("".join(train.read_text().splitlines(keepends=True)[:5]))  # 5 rows where it says 16
    return refused(ctx, train_cli(ctx, data=prepared / "manifest.json"), str(train),
                        "does not match the sha256 the manifest records")


@row("E73")
def nan_adapter_refused(ctx):
    from safetensors.numpy import load_file, save_file

    from common.runs.io import sha256_file
    adapter = ctx.adapter_copy()
    wfile = adapter / "adapter_model.safetensors"
    w = load_file(str(wfile))
    key = sorted(w)[0]
    w[key] = np.full_like(w[key], np.nan)
    save_file(w, str(wfile), metadata={"format": "pt"})
    meta = json.loads((adapter / "twinlora.json").read_text())
    meta["files"]["adapter_model.safetensors"] = sha256_file(wfile)
    (adapter / "twinlora.json").write_text(json.dumps(meta))
    line = expect_error(generate_cli(ctx, adapter), str(adapter), f"tensor {key} holds NaN or inf")
    expect_error(run_cli("convert", adapter, ctx.tmp / "conv", "--to", "mlx"), "holds NaN or inf")
    assert not (ctx.tmp / "conv").exists()
    return line


@row("E74")
def parity_runs_missing(ctx):
    missing = ctx.tmp / "nope"
    r = run_cli("parity", "--model", ctx.model, "--runs", missing, missing)
    line = expect_error(r, f"--runs {missing}", "no training log here")
    assert "PASS" not in r.output
    return line


# ---------------------------------------------------------------- output paths checked up front

@row("E75")
def output_under_a_file(ctx):
    f = write(ctx.tmp / "afile", "x")
    r = train_cli(ctx, out=f / "run")
    line = expect_error(r, f"{f} is a file, so nothing can be created under it")
    assert "backend=torch" not in r.output  # before the model loads
    expect_error(run_cli("eval", "--backend", "torch", "--model", ctx.model, "--data", ctx.data,
                         "--output", f / "ev"), "is a file, so nothing")
    return line


@row("E166")
def output_symlink_loop(ctx):
    loop = ctx.tmp / "loop"
    os.symlink(loop, loop)
    r = train_cli(ctx, out=loop)
    line = expect_error(r, f"--output {loop}: the output is a symbolic link that loops")
    assert "backend=torch" not in r.output and os.readlink(loop) == str(loop)  # before the model loads; link kept
    expect_error(run_cli("merge", "--model", ctx.model, "--adapter", ctx.adapter_copy(), "--output", loop),
                 "symbolic link that loops")
    return line


@row("E167")
def output_dangling_symlink(ctx):
    link, nowhere = ctx.tmp / "link", ctx.tmp / "nowhere"
    os.symlink(nowhere, link)
    r = train_cli(ctx, out=link)
    line = expect_error(r, f"--output {link}: the output is a symbolic link to {nowhere}, which does not exist")
    assert "backend=torch" not in r.output and not nowhere.exists() and link.is_symlink()
    return line


@row("E76")
def output_read_only(ctx):
    ro = ctx.tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    real = os.access
    # root ignores permission bits: answer as the kernel does for a read-only mount
    ctx.mp.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == ro else real(p, mode, *a, **k))
    line = expect_error(train_cli(ctx, out=ro / "run"), f"cannot write in {ro} (read-only or no permission)")
    ro.chmod(0o755)
    return line


@row("E77")
def output_name_too_long(ctx):
    out = ctx.tmp / ("r" * 300)
    line = expect_error(train_cli(ctx, out=out), "a path component is 300 bytes long; filesystems allow 255")
    expect_error(run_cli("merge", "--adapter", ctx.adapter_copy(), "--model", ctx.model, "--output", out), "300 bytes")
    return line


@row("E78")
def output_not_utf8(ctx):
    out = str(ctx.tmp / "run") + "\udcff"  # the byte 0xff in a POSIX argument
    return expect_error(train_cli(ctx, out=out), "is not valid UTF-8 text", "UTF-8 characters")


# ---------------------------------------------------------------- inputs that used to end in a traceback

@row("E79")
def json_nested_too_deep(ctx):
    return bad_data(ctx, '{"text": ' + "[" * 100000 + "]" * 100000 + "}\n", ":1", "JSON nested too deeply", name="deep.jsonl")


@row("E80")
def config_huge_integer(ctx):
    cfg = write(ctx.tmp / "c.yaml", "training:\n  steps: " + "9" * 5000 + "\n")
    r = train_config(ctx, cfg)
    line = expect_error(r, str(cfg), "a value cannot be read")
    expect_error(train_cli(ctx, "--set", "training.steps=" + "9" * 5000), "not valid YAML")
    data = write(ctx.tmp / "big.jsonl", '{"prompt": "a", "completion": "b", "n": ' + "9" * 5000 + "}\n")
    expect_error(train_cli(ctx, data=data), f"{data}:1", "a value cannot be read")
    assert not ctx.out.exists()
    return line


@row("E81")
def lone_surrogate(ctx):
    return bad_data(ctx, '{"prompt": "a \\ud800 b", "completion": "c"}\n', ":1", "lone surrogate", name="s.jsonl")


@row("E82")
def config_utf16(ctx):
    cfg = ctx.tmp / "c.yaml"
    cfg.write_bytes("training:\n  steps: 2\n".encode("utf-16"))
    r = train_config(ctx, cfg)
    return expect_error(r, str(cfg), "not UTF-8 text", "save the config as UTF-8")


@row("E83")
def set_invalid_yaml(ctx):
    return expect_error(train_cli(ctx, "--set", "data.system_prompt=[unclosed"), "the value is not valid YAML", "quote it")


@row("E84")
def set_section_to_a_scalar(ctx):
    return expect_error(train_cli(ctx, "--set", "training=1"), "'training' must be a mapping of keys, got 1")


@row("E85")
def adam_betas_strings(ctx):
    return expect_error(train_cli(ctx, "--set", "training.adam_betas=[a, b]"),
                        "training.adam_betas must be two numbers in [0, 1), got ['a', 'b']")


@row("E86")
def epochs_infinite(ctx):
    r = run_cli("train", "--backend", "torch", "--model", ctx.model, "--data", ctx.data, "--output", ctx.out,
                "--set", "training.steps=null", "--set", "training.epochs=.inf")
    return expect_error(r, "training.epochs must be a finite number, got inf")


@row("E87")
def adapter_config_invalid(ctx):
    adapter = ctx.adapter_copy()
    cfg_path = adapter / "adapter_config.json"
    good = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({k: v for k, v in good.items() if k != "r"}))
    line = expect_error(generate_cli(ctx, adapter), str(cfg_path), "missing or invalid field (KeyError: 'r')")
    cfg_path.write_text(json.dumps({**good, "lora_alpha": "big"}))
    expect_error(generate_cli(ctx, adapter), "missing or invalid field (ValueError")
    cfg_path.write_text(json.dumps([good]))
    expect_error(generate_cli(ctx, adapter), "holds a list, not an object")
    return line


@row("E88")
def twinlora_json_invalid(ctx):
    adapter = ctx.adapter_copy()
    (adapter / "twinlora.json").write_text("{not json")
    line = expect_error(generate_cli(ctx, adapter), str(adapter / "twinlora.json"), "twinlora.json is not valid JSON")
    (adapter / "twinlora.json").write_text('["a list"]')
    expect_error(generate_cli(ctx, adapter), "not a twinlora metadata object")
    return line


@row("E89")
def model_safetensors_truncated(ctx):
    d = model_copy(ctx)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    r = train_model(ctx, d)
    return refused(ctx, r, str(f), "safetensors file is truncated")


@row("E90")
def model_config_json_broken(ctx):
    d = model_copy(ctx)
    (d / "config.json").write_text('{"model_type": "llama",')
    r = train_model(ctx, d)
    return refused(ctx, r, str(d / "config.json"), "config.json is not valid JSON")


@row("E91")
def eval_text_only_records(ctx):
    data = write_jsonl(ctx.tmp / "t.jsonl", [{"text": "just text"}])
    r = run_cli("eval", "--backend", "torch", "--model", ctx.model, "--data", data, "--output", ctx.out,
                "--metrics", "rouge")
    line = expect_error(r, f"{data}:1", 'a {"text"} record has no question and reference answer')
    bad_meta = write_jsonl(ctx.tmp / "m.jsonl", [{"prompt": "q", "completion": "a", "meta": "oops"}])
    expect_error(run_cli("eval", "--backend", "torch", "--model", ctx.model, "--data", bad_meta, "--output", ctx.out,
                         "--metrics", "rouge"), '"meta" must be an object, got str')
    assert not ctx.out.exists()
    return line


@row("E92")
def generate_bad_arguments(ctx):
    r = run_cli("generate", "--backend", "torch", "--model", ctx.model, "--prompt", "", "--template", "raw")
    line = expect_error(r, "--prompt", "an empty --prompt with --template raw")
    r = run_cli("generate", "--backend", "torch", "--model", ctx.model, "--prompt", "hi", "--max-new-tokens", "-1")
    assert r.exit_code == 2 and "Invalid value for '--max-new-tokens': -1 is not in the range x>=1" in r.output, r.output
    assert "Traceback" not in r.output  # the range is declared with the option (tests/test_numeric_options.py)
    return line
