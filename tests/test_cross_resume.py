"""Start on one backend, finish on the other: a run interrupted on MLX resumes on torch and the other
way round. The weights, AdamW moments and step the resuming backend holds are the checkpoint's, bit
for bit; the final adapter is within the cross-backend tolerance (jobs/parity.ADAPTER_TOL) of the
run trained on either backend alone. A 4-bit base is refused (the quantizers differ)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import chat_rows, max_abs_diff, tensors, tiny_config, write_jsonl

STEPS, STOP = 8, 3
PAIRS = (("mlx", "torch"), ("torch", "mlx"))


def quiet(*a, **k):
    pass


def _bit_equal(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def _cfg(model, data, out):
    return tiny_config(model, data, out, training={"steps": STEPS, "save_every": 1, "keep_checkpoints": 0})


@pytest.fixture(scope="module")
def refs(tiny_model, tmp_path_factory):
    """One uninterrupted run per backend, same seed and data (dropout 0: each backend draws its own masks)."""
    from jobs.trainer import train
    root = tmp_path_factory.mktemp("xresume")
    data = write_jsonl(root / "train.jsonl", chat_rows(12))
    for b in ("mlx", "torch"):
        train(_cfg(tiny_model, data, root / f"ref-{b}"), b, echo=quiet)
    return root, data


def _interrupt_after(monkeypatch, backend: str, steps: int):
    """Ctrl-C in step steps+1 on `backend` (progress saved at step `steps`)."""
    from backends import get_backend
    cls = get_backend(backend)
    orig, calls = cls.accumulate, {"n": 0}

    def accumulate(self, batch, sync=True):
        calls["n"] += 1
        if calls["n"] == steps + 1:
            raise KeyboardInterrupt
        return orig(self, batch, sync)
    monkeypatch.setattr(cls, "accumulate", accumulate)
    return lambda: monkeypatch.setattr(cls, "accumulate", orig)


@pytest.mark.parametrize("first,then", PAIRS)
def test_resume_on_the_other_backend(refs, tiny_model, tmp_path, monkeypatch, first, then):
    from common.errors import TrainingError
    from jobs import trainer
    from jobs.parity import ADAPTER_TOL
    root, data = refs
    out = tmp_path / "run"
    restore = _interrupt_after(monkeypatch, first, STOP)
    with pytest.raises(TrainingError, match=f"progress saved at step {STOP}"):
        trainer.train(_cfg(tiny_model, data, out), first, echo=quiet)
    restore()

    held, orig_build = {}, trainer.build

    def build_and_read(plan):    # what the resuming backend holds before its first step
        loaded = orig_build(plan)
        held["opt"], held["opt_step"] = loaded.backend.optimizer_state()
        held["weights"] = loaded.backend.lora_weights()
        return loaded
    monkeypatch.setattr(trainer, "build", build_and_read)
    lines = []
    trainer.train(_cfg(tiny_model, data, out), then, resume=True, echo=lambda *a, **k: lines.append(" ".join(map(str, a))))

    ckpt = out / "checkpoints" / f"step-{STOP:06d}"
    assert held["opt_step"] == STOP
    assert _bit_equal(held["opt"], tensors(ckpt / "optimizer.safetensors"))
    assert _bit_equal(held["weights"], tensors(ckpt / "adapter_model.safetensors"))
    assert any(f"resuming a {first} checkpoint on {then}" in x for x in lines), lines

    final = tensors(out / "adapter" / "adapter_model.safetensors")
    d_then = max_abs_diff(final, tensors(root / f"ref-{then}" / "adapter" / "adapter_model.safetensors"))
    d_first = max_abs_diff(final, tensors(root / f"ref-{first}" / "adapter" / "adapter_model.safetensors"))
    d_refs = max_abs_diff(*(tensors(root / f"ref-{b}" / "adapter" / "adapter_model.safetensors") for b in PAIRS[0]))
    print(f"\n[cross resume {first}→{then} at step {STOP}] max |Δ adapter| vs all-{then} {d_then:.2e}, "
          f"vs all-{first} {d_first:.2e} (all-mlx vs all-torch {d_refs:.2e})")
    assert d_then < ADAPTER_TOL and d_first < ADAPTER_TOL and d_refs < ADAPTER_TOL
    assert np.abs(final["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]).max() > 1e-3  # trained
    from common.runs.run_dir import RunDir
    log = RunDir(out).read_log()
    assert [r["step"] for r in log if r.get("event") == "train"] == list(range(1, STEPS + 1))
    assert [(r["event"], r.get("backend")) for r in log if r.get("event") in ("start", "resume")] == \
        [("start", first), ("resume", then)]
    last = json.loads((out / "checkpoints" / f"step-{STEPS:06d}" / "trainer_state.json").read_text())
    assert last["backend"] == then


def test_written_by_reads_old_checkpoints_from_the_log(tmp_path):
    """Checkpoints written before the backend was recorded: the run's last start/resume event says it."""
    from common.runs.run_dir import RunDir
    from jobs.train_setup import written_by
    run = RunDir(tmp_path)
    assert written_by(run, {}) is None
    run.log({"event": "start", "step": 0, "backend": "mlx"})
    assert written_by(run, {}) == "mlx"
    run.log({"event": "resume", "step": 2, "backend": "torch"})
    assert written_by(run, {}) == "torch" and written_by(run, {"backend": "mlx"}) == "mlx"


def test_quantized_base_is_refused_on_the_other_backend():
    from common.errors import TrainingError
    from common.config.resume import check_backend_switch
    check_backend_switch("ck", "mlx", "torch", None)          # float base: either backend
    check_backend_switch("ck", "mlx", "mlx", "4bit")          # same backend: its own quantizer
    with pytest.raises(TrainingError) as e:
        check_backend_switch("ck", "torch", "mlx", "4bit")
    assert "bitsandbytes NF4" in str(e.value) and "--backend torch" in e.value.fix
    with pytest.raises(TrainingError) as e:   # a run from before the default changed: the scheme it recorded
        check_backend_switch("ck", "mlx", "torch", "4bit", "mlx-affine-4-g64")
    assert "a 4bit base quantized by mlx-affine-4-g64 (mlx affine 4-bit, group 64" in str(e.value)
