"""docs/errors.md rows about training runs: outputs, NaN, interrupts, full disks, resume, data parallel, bench --lengths.

Each row is registered under its id by `@row`; tests/test_errors.py runs every row through the
same checks (one `error:` line, exit 2, no traceback, the documented pattern)."""
from __future__ import annotations

import shutil

from error_rows import _fail_replace_for, _nth_call_patch, expect_error, no_hidden_leftovers, refused, row, train_cli, write
from helpers import run_cli


# ---------------------------------------------------------------- training runs

@row("E36")
def output_dir_exists(ctx):
    from common.runs.ownership import RUN_MARKER, mark_run
    mark_run(ctx.out)  # a run of ours (a directory that is not ours: E57)
    write(ctx.out / "keep.txt", "x")
    line = expect_error(train_cli(ctx), str(ctx.out), "--resume", "--overwrite")
    assert (ctx.out / "keep.txt").read_text() == "x"
    assert sorted(p.name for p in ctx.out.iterdir()) == ["keep.txt", RUN_MARKER]
    return line


@row("E37")
def nan_loss(ctx):
    from common.runs.run_dir import RunDir

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
    return refused(ctx, train_cli(ctx, "--lr", "1e30"), "training.lr=1e+30 is absurd", "<= 1")


@row("E39")
def ctrl_c_saves_and_resumes(ctx):
    from common.runs.run_dir import RunDir

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
    from common.runs.run_dir import RunDir
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


# ---------------------------------------------------------------- data parallel

@row("E55")
def fsdp_on_mlx(ctx):
    r = train_cli(ctx, "--set", "training.parallel=fsdp", backend="mlx")
    line = expect_error(r, "training.parallel", "torch backend only")
    assert not ctx.out.exists() and "backend=mlx" not in r.output  # before the model loads
    return line


@row("E56")
def fsdp_with_4bit(ctx):
    return refused(ctx, train_cli(ctx, "--set", "training.parallel=fsdp", "--set", "model.quantize=4bit"),
                        "training.parallel: fsdp does not support model.quantize", "config-help")


@row("E100")
def four_bit_on_mps(ctx):
    """torch's own query says MPS (an Apple GPU) and no CUDA: bitsandbytes NF4 has no MPS path here."""
    import torch
    ctx.mp.delenv("TWINLORA_DEVICE", raising=False)
    ctx.mp.setattr(torch.cuda, "is_available", lambda: False)
    ctx.mp.setattr(torch.backends.mps, "is_available", lambda: True)
    r = train_cli(ctx, "--set", "model.quantize=4bit")
    line = expect_error(r, "model.quantize", "runs on CUDA or CPU, not mps", "--backend mlx")
    assert not ctx.out.exists() and "backend=torch" not in r.output  # before the model loads
    return line


@row("E181")
def forced_device_not_here(ctx):
    """TWINLORA_DEVICE naming a device torch does not see (no CUDA here), or no torch device at all."""
    ctx.mp.setenv("TWINLORA_DEVICE", "gpu")
    refused(ctx, train_cli(ctx), "TWINLORA_DEVICE", "'gpu' is not a torch device", "cuda, mps, cpu")
    ctx.mp.setenv("TWINLORA_DEVICE", "cuda")
    return refused(ctx, train_cli(ctx), "TWINLORA_DEVICE: set to cuda, but torch sees no cuda device")


@row("E101")
def dequantized_from_without_quantize(ctx):
    r = run_cli("parity", "--model", ctx.model, "--dequantized-from", "torch")
    line = expect_error(r, "--dequantized-from", "only applies to QLoRA parity", "--quantize 4bit")
    assert "max |Δlogit|" not in r.output  # refused before any model is loaded
    return line


# ---------------------------------------------------------------- bench --lengths (issue 19)

@row("E140")
def bench_bad_lengths(ctx):
    r = run_cli("bench", "--model", ctx.model, "--lengths", "512,long", "--output", ctx.out)
    return refused(ctx, r, "--lengths", "512,long", "comma list")


@row("E141")
def bench_lengths_beyond_context(ctx):
    r = run_cli("bench", "--model", ctx.model, "--lengths", "128,1024", "--output", ctx.out)
    line = expect_error(r, "--lengths", "1024 tokens", "max_position_embeddings 512")
    assert not ctx.out.exists() and "running" not in r.output   # refused before any run
    return line


# ---------------------------------------------------------------- bench --objective dpo (issue 28)

@row("E210")
def bench_dpo_without_pairs(ctx):
    r = run_cli("bench", "--model", ctx.model, "--objective", "dpo", "--output", ctx.out)
    return refused(ctx, r, "--objective dpo", "needs preference pairs", "--data PAIRS.jsonl")


@row("E211")
def bench_dpo_with_lengths(ctx):
    r = run_cli("bench", "--model", ctx.model, "--objective", "dpo", "--lengths", "128,256", "--output", ctx.out)
    return refused(ctx, r, "--objective dpo", "--lengths sweeps SFT only")
