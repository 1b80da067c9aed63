"""Data parallel: `train --nproc 2` (2 local CPU processes: torch DDP and torch FSDP2 over gloo,
MLX ring on 127.0.0.1) gives the adapter of 1 process with the same global batch.

grad_accumulation=4 over 2 ranks: each rank sums the gradients of 2 micro-batches, the all-reduce
adds the two partial sums, so only the fp32 summation order differs from 1 process
(((g0+g1)+g2)+g3 vs (g0+g2)+(g1+g3)). Measured after 3 steps at lr 1e-2 and 1e-3, dropout 0 and
0.1 (weights up to ~0.14): max |Δweight| 0.9e-6..2.6e-6 (torch DDP; FSDP the same), 0.3e-6..2.6e-6 (mlx); max |Δloss|
≤ 3.3e-7 (`pytest -s` prints this run's figures). Tolerances: 1e-5 and 2e-6. A run with another
global batch differs by ~4e-2 (asserted > 5e-4), so the tolerance does tell the two apart.
Both sides must use the same BLAS: the MLX ranks get the BLAS this test process uses
(TWINLORA_BLAS), or the comparison would measure OpenBLAS vs reference BLAS (~2e-5).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import chat_rows, tiny_config, write_jsonl

from common.config.schema import dump_yaml
from common.errors import ConfigError
from common.runs.run_dir import RunDir
from jobs.trainer import train

ROOT = Path(__file__).resolve().parents[1]
WEIGHT_TOL, LOSS_TOL = 1e-5, 2e-6
STEPS = 3
RUNS = {"torch": ("torch", "ddp"), "torch-fsdp": ("torch", "fsdp"), "mlx": ("mlx", "ddp")}  # name → backend, parallel


def _ring_unavailable() -> str | None:
    try:
        from backends.mlx.blas import preload_fast_blas
        preload_fast_blas()  # before mlx.core is imported, as the trainer does
        import mlx.core as mx
    except ImportError as exc:
        return f"mlx is not installed ({exc})"
    if not mx.distributed.is_available("ring"):
        return "this mlx build has no ring backend (mx.distributed.is_available('ring') is False)"
    return None


def _weights(run: Path) -> dict:
    from safetensors.numpy import load_file
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _train_log(run: Path) -> list[dict]:
    return [r for r in RunDir(run).read_log() if r.get("event") == "train"]


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    rows = chat_rows(12)
    data = root / "train.jsonl"
    write_jsonl(data, rows)
    valid = root / "valid.jsonl"  # validation during training is a collective under FSDP
    write_jsonl(valid, rows[:5])
    return root, tiny_model, data


@pytest.fixture(scope="module")
def two_procs(setup):
    """Start both 2-process runs at once (they overlap their imports), return {backend: (proc, dir)}."""
    root, model, data = setup
    # dropout > 0: its masks are seeded per (step, micro-batch), so they must not depend on N either
    cfg = tiny_config(model, data, root / "unused", training={"steps": STEPS, "grad_accumulation": 4, "save_every": 2,
                                                              "eval_every": 2},
                      lora={"dropout": 0.1}, data={"valid": str(root / "valid.jsonl")})
    config = root / "dist.yaml"
    config.write_text(dump_yaml(cfg), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not _ring_unavailable():
        from backends.mlx.blas import preload_fast_blas
        env["TWINLORA_BLAS"] = preload_fast_blas() or "none"  # the BLAS the in-process MLX run uses
    procs = {}
    for run in RUNS:
        backend, parallel = RUNS[run]
        if backend == "mlx" and _ring_unavailable():
            continue
        out = root / f"two-{run}"
        procs[run] = (subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), "train", "--config", str(config), "--backend", backend,
             "--output", str(out), "--nproc", "2", "--set", f"training.parallel={parallel}"], env=env, cwd=str(root),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), out)
    yield cfg, procs
    for p, _ in procs.values():
        if p.poll() is None:
            p.kill()


def _finished(procs, run):
    proc, two = procs[run]
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output
    return output, two


@pytest.mark.parametrize("run", list(RUNS))
def test_two_processes_match_one(run, setup, two_procs, tmp_path):
    backend, parallel = RUNS[run]
    if backend == "mlx" and _ring_unavailable():
        pytest.skip(_ring_unavailable())
    cfg, procs = two_procs
    one = tmp_path / "one"
    cfg.output = str(one)
    train(cfg, backend, echo=lambda *a, **k: None)
    output, two = _finished(procs, run)
    engine = "FSDP2: weights sharded" if parallel == "fsdp" else "replicated"
    assert "data parallel: 2 processes" in output and engine in output
    assert output.count(f"step {STEPS}/{STEPS}  loss") == 1  # rank 0 only

    w1, w2 = _weights(one), _weights(two)
    assert w1.keys() == w2.keys()
    gap = max(float(np.abs(w1[k] - w2[k]).max()) for k in w1)
    assert gap <= WEIGHT_TOL, f"max |Δweight| 1 vs 2 processes = {gap:.3e}"
    l1, l2 = _train_log(one), _train_log(two)
    assert [r["step"] for r in l2] == list(range(1, STEPS + 1))  # one writer: no duplicated lines
    assert [r["targets"] for r in l1] == [r["targets"] for r in l2]  # same global batch
    loss_gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(l1, l2))
    v1, v2 = ([r["val_loss"] for r in RunDir(d).read_log() if r.get("event") == "eval"] for d in (one, two))
    assert len(v2) == 3 and np.allclose(v1, v2, rtol=0, atol=LOSS_TOL)  # before training, step 2 and the end
    print(f"{run}: 1 vs 2 processes: max |Δweight| {gap:.2e}, max |Δloss| {loss_gap:.2e}")  # pytest -s
    assert loss_gap <= LOSS_TOL
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-000002", "step-000003"]

    # The tolerance is meaningful: another global batch (grad_accumulation 2) lands far away.
    cfg.output, cfg.training.grad_accumulation = str(tmp_path / "other"), 2
    train(cfg, backend, echo=lambda *a, **k: None)
    cfg.training.grad_accumulation = 4
    w3 = _weights(tmp_path / "other")
    other = max(float(np.abs(w1[k] - w3[k]).max()) for k in w1)
    print(f"{run}: another global batch: max |Δweight| {other:.2e}")
    assert other > 50 * WEIGHT_TOL


def test_fsdp_resume_is_exact(setup, two_procs, tmp_path):
    """Checkpoints hold whole tensors gathered from the FSDP shards; resuming re-shards the LoRA
    weights and AdamW moments, and the run ends bit-identical to the uninterrupted one."""
    import shutil
    _, two = _finished(two_procs[1], "torch-fsdp")
    cut = tmp_path / "cut"
    shutil.copytree(two, cut)
    for name in ("checkpoints/step-000003", "adapter"):
        shutil.rmtree(cut / name)
    (cut / "summary.json").unlink()
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--config", str(cut / "config.yaml"),
                        "--backend", "torch", "--output", str(cut), "--nproc", "2", "--resume"],
                       capture_output=True, text=True, timeout=240, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming at step 2" in r.stdout and "FSDP2" in r.stdout
    a, b = _weights(two), _weights(cut)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_grad_accumulation_must_split_over_processes(setup):
    from jobs.distributed import from_env
    from jobs.launch import launch
    root, model, data = setup
    cfg = tiny_config(model, data, root / "never", training={"grad_accumulation": 3})
    with pytest.raises(ConfigError, match="not a multiple of the 2 processes"):
        launch(2, "torch", {"config": cfg.to_dict()}, echo=lambda *a, **k: None)
    assert not (root / "never").exists()
    assert from_env("torch").world_size == 1 and from_env("mlx").world_size == 1  # no launcher: 1 process
