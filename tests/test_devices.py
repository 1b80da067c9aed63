"""Every device branch runs here, on the CPU: the table (common/models/devices.py) forced to each device, and
each non-CPU branch checked against the CPU path's numbers (float32 tolerance), so no branch is code
that only a Mac or a GPU box would ever execute."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import backend_with_lora, loss_and_lora_grads

RTOL = 2e-5        # float32: the chunked attention's polynomial exp is within 1.3e-5 of float64


# ---------------------------------------------------------------- the table itself

def test_mlx_table_cpu_and_gpu():
    from common.models.devices import mlx_choices, sdpa_attention_bytes
    cpu = mlx_choices("cpu", 4096, chunk=256, compiled_rows=2048)
    assert (cpu.chunked_attention, cpu.exp(True), cpu.exp(False), cpu.compiled_step, cpu.heap, cpu.measured) == \
        (True, "poly", "power", True, "reuse", True)
    short = mlx_choices("cpu", 200, chunk=256, compiled_rows=2048)
    assert not short.chunked_attention and not short.compiled_step and short.heap is None
    # never measured on a GPU: plain mlx-lm (mx.fast SDPA, mx.exp, eager, glibc's heap) ...
    gpu = mlx_choices("gpu", 8192, chunk=256, compiled_rows=2048, attention_bytes=sdpa_attention_bytes(1, 9, 8192),
                      memory_bytes=64 * 2**30)
    assert (gpu.chunked_attention, gpu.exp(True), gpu.compiled_step, gpu.heap, gpu.measured) == \
        (False, "exp", False, None, False)
    assert "plain mlx-lm" in gpu.describe() and "never measured" in gpu.describe()
    # ... unless plain SDPA's scores would not fit: 3.5 × 9 heads × 8192² × 4 B = 7.9 GiB > half of 8 GiB
    assert sdpa_attention_bytes(1, 9, 8192) == int(3.5 * 9 * 8192 ** 2 * 4)
    small = mlx_choices("gpu", 8192, chunk=256, compiled_rows=2048, attention_bytes=sdpa_attention_bytes(1, 9, 8192),
                        memory_bytes=8 * 2**30)
    assert small.chunked_attention and small.exp(True) == "exp" and "7.9 GiB" in small.why
    assert not mlx_choices("gpu", 8192, chunk=256, compiled_rows=2048, attention_bytes=10**12).chunked_attention


def test_torch_table_and_device_order():
    from common.models.devices import bnb_compute_dtype, torch_choices, torch_device
    assert torch_choices("cpu", 8192, grad_checkpointing=True, long_rows=4096).heap == "release"
    assert torch_choices("cpu", 8192, grad_checkpointing=False, long_rows=4096).heap is None
    for dev in ("cuda", "mps"):
        c = torch_choices(dev, 8192, grad_checkpointing=True, long_rows=4096)
        assert c.heap is None and not c.measured
    assert [torch_device(None, c, m) for c, m in ((True, True), (False, True), (False, False))] == ["cuda", "mps", "cpu"]
    assert bnb_compute_dtype("cuda", 8, "float32") == "bfloat16" and bnb_compute_dtype("cuda", 7, "float32") == "float16"
    assert bnb_compute_dtype("cpu", None, "float32") == "float32" and bnb_compute_dtype("mps", None, "float16") == "float16"


def test_pick_device_follows_the_torch_queries(monkeypatch):
    import torch

    from backends.torch.backend import pick_device
    monkeypatch.delenv("TWINLORA_DEVICE", raising=False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == "cpu"


# ---------------------------------------------------------------- MLX: the GPU branches, run on the CPU

def _batch(vocab: int, L: int = 48):
    from common.training.batching import Batch
    rng = np.random.default_rng(3)
    ids = rng.integers(3, vocab, (2, L)).astype(np.int32)
    mask = np.zeros(ids.shape, np.float32)
    mask[:, 10:] = 1
    return Batch(ids, mask, int(mask[:, 1:].sum()), 2 * L)


def _gap(a, b) -> float:
    """Largest relative difference of the loss and of each gradient (scaled by its largest entry)."""
    (sa, ga), (sb, gb) = a, b
    assert sorted(ga) == sorted(gb) and ga
    return max([abs(sa - sb) / abs(sa)] + [float(np.abs(ga[k] - gb[k]).max() / (np.abs(ga[k]).max() or 1)) for k in ga])


@pytest.fixture
def mlx_long(monkeypatch):
    """Rows of 48 tokens stand in for long ones: chunks of 16, compiled from 32 on the CPU."""
    import backends.mlx.attention as att
    monkeypatch.setattr("common.training.longseq.ATTENTION_CHUNK", 16)
    monkeypatch.setattr(att, "COMPILED_ROWS", 32)


@pytest.mark.parametrize("memory", [None, 1], ids=["plain-sdpa", "too-big-chunked"])
def test_mlx_gpu_branch_matches_the_cpu_path(tiny_model, monkeypatch, mlx_long, memory):
    """Forced 'gpu': mx.fast SDPA (or, when SDPA would not fit, the chunked attention with mx.exp),
    eager step, no heap policy; the same loss and gradients as the CPU path (chunked, polynomial
    exponentials, compiled step) within float32 tolerance."""
    import mlx.core as mx

    import backends.mlx.backend as mb
    import backends.mlx.device as dev
    from common.training.tokenize import load_tokenizer
    batch = _batch(len(load_tokenizer(tiny_model)))
    heap, compiles, real = [], [], mx.compile
    monkeypatch.setattr(mb, "reuse_freed_memory", lambda: heap.append(1) or True)
    monkeypatch.setattr(mx, "compile", lambda *a, **k: compiles.append(1) or real(*a, **k))
    cpu = loss_and_lora_grads(backend_with_lora("mlx", tiny_model), batch)
    assert heap and compiles and dev.choices(_FakeModel(), 2, 47).chunked_attention   # the CPU path ran as measured
    heap.clear(), compiles.clear()
    monkeypatch.setattr(dev, "device_kind", lambda: "gpu")
    monkeypatch.setattr(dev, "memory_bytes", lambda: memory)
    plan = dev.choices(_FakeModel(), 2, 47)
    assert plan.chunked_attention is (memory is not None) and plan.exp(True) == "exp" and not plan.compiled_step
    gpu = loss_and_lora_grads(backend_with_lora("mlx", tiny_model), batch)
    assert not heap and not compiles
    gap = _gap(cpu, gpu)
    print(f"\n[mlx gpu branch, memory={memory}] max relative gap to the CPU path: {gap:.2e}")
    assert 0 <= gap < RTOL


class _FakeModel:
    class args:
        num_attention_heads = 4


def test_mlx_gpu_exponential_matches_the_cpu_ones():
    """The chunked attention's exponentials: mx.exp (GPU), the CPU polynomial and power, against float64."""
    import mlx.core as mx

    from backends.mlx.attention import EXPS
    rng = np.random.default_rng(0)
    s = rng.normal(0, 4, (64, 256)).astype(np.float32)
    m = s.max(-1, keepdims=True)
    want = np.exp(s.astype(np.float64) - m)
    got = {k: np.array(f(mx.array(s), mx.array(m))).astype(np.float64) for k, f in EXPS.items()}
    rel = {k: float((np.abs(g - want) / np.maximum(want, 1e-30))[want > 2.0 ** -60].max()) for k, g in got.items()}
    print(f"\n[exponentials] max relative error vs float64: {rel}")
    assert rel["exp"] < 5e-6 and rel["power"] < 5e-6 and rel["poly"] < RTOL   # measured 2.5e-6, 2.5e-6, 8.0e-6
    assert np.abs(got["exp"] - got["poly"]).max() < RTOL


def test_mlx_peak_memory_falls_back_to_metal(tiny_model, monkeypatch):
    import mlx.core as mx
    be = backend_with_lora("mlx", tiny_model)
    want = be.peak_memory_bytes()
    monkeypatch.delattr(mx, "get_peak_memory")
    assert be.peak_memory_bytes() == want


# ---------------------------------------------------------------- torch: CUDA/MPS choices, refusals
# (the MPS path refusing bitsandbytes 4-bit, through torch's own device query: docs/errors.md E100;
# TWINLORA_DEVICE naming a device torch does not see: E181)

@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_torch_gpu_choices_match_the_cpu_path(tiny_model, monkeypatch, device):
    """On CUDA/MPS the step has no heap policy of ours; forced here on the CPU tensors, the same numbers."""
    import backends.torch.backend as tb
    from common.models.devices import torch_choices
    from common.training.tokenize import load_tokenizer
    batch = _batch(len(load_tokenizer(tiny_model)), L=64)
    released = []
    monkeypatch.setattr(tb, "release_freed_memory", lambda: released.append(1) or True)
    monkeypatch.setattr(tb, "LONG_ROWS", 64)
    be = backend_with_lora("torch", tiny_model, grad_checkpointing=True)
    cpu = loss_and_lora_grads(be, batch)
    assert released
    released.clear()
    monkeypatch.setattr(tb, "torch_choices", lambda _dev, *a, **k: torch_choices(device, *a, **k))
    other = loss_and_lora_grads(be, batch)
    assert not released and _gap(cpu, other) == 0.0


def test_paged_optimizer_refused_off_cuda(tiny_model):
    from common.errors import BackendError
    be = backend_with_lora("torch", tiny_model)
    for dev in ("cpu", "mps"):
        be.device = dev
        with pytest.raises(BackendError, match="paged_adamw_8bit needs bitsandbytes on an NVIDIA GPU"):
            be.make_optimizer((0.9, 0.999), 1e-8, 0.0, "paged_adamw_8bit")
