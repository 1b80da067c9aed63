"""twinlora's CPU kernels for MLX (backends/mlx/cpu_kernels): each equals MLX's own op, forward and
backward; a training step with them equals one without; they are off where they should be off.

scripts/setup.sh builds them; on a developer's machine without the build these tests skip, under
CI=true a missing build fails them (CI must test the path users train on)."""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

if importlib.util.find_spec("mlx") is None:
    pytest.skip("mlx is not installed", allow_module_level=True)
mx = nn = cpu_kernels = None     # imported by the fixture below, not while pytest collects


@pytest.fixture(scope="module", autouse=True)
def mlx_modules(tiny_model):
    """mlx imported as the rest of the suite imports it: after torch (tiny_model is built with it),
    OpenBLAS loaded before mlx.core (get_backend). In one process this order decides which BLAS each
    library binds to, and later tests (test_resume) compare in-process runs with fresh processes
    bit for bit; importing mlx.core while pytest collects changed them."""
    global mx, nn, cpu_kernels
    from backends import get_backend
    get_backend("mlx")
    import mlx.core as mx
    import mlx.nn as nn

    from backends.mlx import cpu_kernels


@pytest.fixture(scope="module")
def kernels():
    if not cpu_kernels.available():
        if os.environ.get("CI"):
            pytest.fail(f"twinlora's CPU kernels are not usable: {cpu_kernels.why_not()}")
        pytest.skip(f"CPU kernels not usable here: {cpu_kernels.why_not()}")
    return cpu_kernels.load()


@pytest.fixture
def active(kernels):
    """The kernels switched on as inside `in_model`."""
    with cpu_kernels.switched_on():
        yield kernels


def _rel(a, b) -> float:
    return float(mx.abs(a - b).max() / mx.maximum(mx.abs(b).max(), 1e-30))


def _grads(f, *args):
    """Gradients of a weighted sum of f's output (a non-uniform cotangent) w.r.t. every argument."""
    w = None

    def scalar(*a):
        nonlocal w
        out = f(*a)
        w = mx.random.normal(out.shape, key=mx.random.key(7)) if w is None else w
        return (out * w).sum()
    return mx.grad(scalar, argnums=tuple(range(len(args))))(*args)


def test_gelu_approx_equals_mlx_forward_and_backward(kernels):
    x = mx.random.normal((5, 301), key=mx.random.key(8)) * 4
    assert _rel(kernels.gelu_approx(x), nn.gelu_approx(x)) < 2e-6
    assert _rel(_grads(kernels.gelu_approx, x)[0], _grads(nn.gelu_approx, x)[0]) < 2e-6


@pytest.mark.parametrize("trainable_weight", [False, True])
def test_rms_norm_equals_mx_fast_forward_and_backward(active, trainable_weight):
    x = mx.random.normal((2, 7, 96), key=mx.random.key(9)) * 3
    w = 1.0 + mx.random.normal((96,), key=mx.random.key(10)) * 0.2
    assert _rel(cpu_kernels.rms_norm(x, w, 1e-6), mx.fast.rms_norm(x, w, 1e-6)) < 2e-6
    args = (x, w) if trainable_weight else (x,)
    ours = _grads(lambda *a: cpu_kernels.rms_norm(a[0], a[1] if trainable_weight else w, 1e-6), *args)
    theirs = _grads(lambda *a: mx.fast.rms_norm(a[0], a[1] if trainable_weight else w, 1e-6), *args)
    for a, b in zip(ours, theirs):
        assert _rel(a, b) < 1e-5
    assert _rel(cpu_kernels.rms_norm(x, None, 1e-6), mx.fast.rms_norm(x, None, 1e-6)) == 0   # MLX's own


def test_silu_mul_equals_mlx_forward_and_backward(kernels):
    g = mx.random.normal((3, 37, 129), key=mx.random.key(0)) * 4
    u = mx.random.normal((3, 37, 129), key=mx.random.key(1))
    assert _rel(kernels.silu_mul(g, u), nn.silu(g) * u) < 2e-6
    for ours, theirs in zip(_grads(kernels.silu_mul, g, u), _grads(lambda a, b: nn.silu(a) * b, g, u)):
        assert _rel(ours, theirs) < 2e-6


def test_logsumexp_is_closer_to_float64_than_mlx(kernels):
    x = mx.random.normal((64, 5000), key=mx.random.key(2)) * 6
    exact = np.log(np.exp(np.array(x, dtype=np.float64)).sum(-1))
    ours = np.abs(np.array(kernels.logsumexp(x)) - exact).max()
    theirs = np.abs(np.array(mx.logsumexp(x, axis=-1)) - exact).max()
    assert ours < 2e-5 and ours <= theirs
    for a, b in zip(_grads(kernels.logsumexp, x), _grads(lambda v: mx.logsumexp(v, axis=-1), x)):
        assert _rel(a, b) < 1e-4


def test_logsumexp_edges(kernels):
    x = mx.array([[0.0, -mx.inf, 3.0], [-mx.inf, -mx.inf, -mx.inf], [1.0, float("nan"), 2.0], [1e30, 0.0, 0.0]])
    out = np.array(kernels.logsumexp(x))
    assert out[0] == pytest.approx(np.log(1 + np.exp(3.0)), rel=1e-6)
    assert out[1] == -np.inf                      # an all-masked row, as mx.logsumexp
    assert np.isnan(out[2])                       # a NaN logit is not hidden by the clamp
    assert out[3] == pytest.approx(1e30, rel=1e-6)


def test_cross_entropy_equals_mlx_for_every_reduction(active):
    logits = mx.random.normal((2, 9, 301), key=mx.random.key(3)) * 3
    y = mx.array(np.random.default_rng(0).integers(0, 301, (2, 9)).astype(np.int32))
    for reduction in ("none", "sum", "mean"):
        ours = cpu_kernels.cross_entropy(logits, y, reduction=reduction)
        theirs = nn.losses.cross_entropy(logits, y, reduction=reduction)
        assert ours.shape == theirs.shape and _rel(ours, theirs) < 1e-5
    a = mx.grad(lambda v: cpu_kernels.cross_entropy(v, y, reduction="sum"))(logits)
    b = mx.grad(lambda v: nn.losses.cross_entropy(v, y, reduction="sum"))(logits)
    assert _rel(a, b) < 1e-5


def _fast_sdpa(q, k, v, cache=None, scale=1.0, mask=None, sinks=None):
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask, sinks=sinks)


@pytest.mark.parametrize("mask", ["causal", "none", "bool", "additive-per-head", "causal-after-cache"])
def test_attention_equals_mx_fast_sdpa(active, mask):
    """Grouped-query heads (6 over 2), every mask kind mlx-lm passes; queries after cached keys
    (Lq < Lk) take the causal mask's offset, as mx.fast does."""
    B, H, Hk, L, S, D = 2, 6, 2, 19, 19, 16
    if mask == "causal-after-cache":
        L = 7
    keys = [mx.random.key(i) for i in range(4)]
    q = mx.random.normal((B, H, L, D), key=keys[0])
    k = mx.random.normal((B, Hk, S, D), key=keys[1])
    v = mx.random.normal((B, Hk, S, D), key=keys[2])
    m = {"causal": "causal", "none": None, "causal-after-cache": "causal",
         "bool": mx.random.uniform(shape=(L, S), key=keys[3]) > 0.3,
         "additive-per-head": mx.random.normal((B, H, L, S), key=keys[3])}[mask]
    ours = cpu_kernels.attention(_fast_sdpa)
    assert _rel(ours(q, k, v, scale=0.25, mask=m), _fast_sdpa(q, k, v, scale=0.25, mask=m)) < 1e-5
    ga = _grads(lambda *a: ours(*a, scale=0.25, mask=m), q, k, v)
    gb = _grads(lambda *a: _fast_sdpa(*a, scale=0.25, mask=m), q, k, v)
    for a, b in zip(ga, gb):
        assert _rel(a, b) < 1e-5


def test_attention_hands_other_cases_to_mlx(active):
    """A quantized cache, attention sinks or bfloat16 inputs go to mlx-lm's function unchanged."""
    seen = []

    def inner(q, k, v, cache=None, scale=1.0, mask=None, sinks=None):
        seen.append((cache, sinks, q.dtype))
        return q
    sdpa = cpu_kernels.attention(inner)
    q = mx.zeros((1, 2, 3, 4))

    class QuantizedCache:
        bits = 4
    sdpa(q, q, q, cache=QuantizedCache(), mask="causal")
    sdpa(q, q, q, sinks=mx.zeros((2,)))
    sdpa(q.astype(mx.bfloat16), q.astype(mx.bfloat16), q.astype(mx.bfloat16))
    assert len(seen) == 3 and seen[2][2] == mx.bfloat16


def test_causal_softmax_fully_masked_rows_are_zero(kernels):
    x = mx.full((1, 3, 4), -mx.inf)
    p = np.array(kernels.softmax(x))
    assert (p == 0).all() and not np.isnan(p).any()
    s = np.array(kernels.softmax(mx.zeros((1, 3, 5)), causal=True))[0]   # 3 queries after 2 cached keys
    np.testing.assert_allclose(s, [[1 / 3] * 3 + [0, 0], [1 / 4] * 4 + [0], [1 / 5] * 5], rtol=1e-6)


def test_threads_do_not_change_results(kernels):
    x = mx.random.normal((96, 4099), key=mx.random.key(5))
    before = kernels.threads()
    try:
        kernels.set_threads(1)
        one = [np.array(kernels.logsumexp(x)), np.array(kernels.silu_mul(x, x)), np.array(kernels.softmax(x))]
        kernels.set_threads(3)
        three = [np.array(kernels.logsumexp(x)), np.array(kernels.silu_mul(x, x)), np.array(kernels.softmax(x))]
    finally:
        kernels.set_threads(before)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="at least 1"):
        kernels.set_threads(0)


def _step(backend, batch):
    from mlx.utils import tree_flatten
    loss, n = backend.accumulate(batch)
    grads = {k: np.array(v) for k, v in tree_flatten(backend._grads)}
    backend._grads = None
    return loss / n, grads


@pytest.mark.parametrize("family, expected", [("llama", {"silu_mul", "rms_norm", "logsumexp", "softmax"}),
                                              ("gemma3_text", {"gelu_approx", "rms_norm", "logsumexp", "softmax"})])
def test_training_step_with_kernels_equals_without(request, kernels, family, expected):
    """A step's loss and every LoRA gradient are MLX's own to 1e-5, padded and packed rows, on the
    tiny llama (SwiGLU, grouped-query attention) and the Gemma-3-4B seed (GELU, sliding-window
    masks crossed by the rows); outside the step the model's module is mlx-lm's again."""
    from common.training.batching import collate, pack
    from common.training.tokenize import Tokenized
    from test_packing import _with_lora

    be = _with_lora("mlx", request.getfixturevalue("tiny_model" if family == "llama" else "gemma_seed"))
    assert be.model.model_type == family
    rng = np.random.default_rng(4)
    rows = [Tokenized(tuple(rng.integers(3, 300, n).tolist()), tuple([0] * (n // 3) + [1] * (n - n // 3)))
            for n in (9, 23, 16)]
    mod = sys.modules[type(be.model).__module__]
    mlx_lm_functions = (getattr(mod, "swiglu", None), mod.nn, mod.scaled_dot_product_attention)

    class Counting:                          # the compiled module, counting which kernels the step calls
        def __init__(self, inner):
            self.inner, self.calls = inner, set()

        def __getattr__(self, name):
            self.calls.add(name)
            return getattr(self.inner, name)
    for batch in (collate(rows, 0), pack(rows)):
        cpu_kernels.load()
        spy = cpu_kernels._module = Counting(kernels)
        with_kernels = _step(be, batch)
        assert spy.calls == expected
        assert (getattr(mod, "swiglu", None), mod.nn, mod.scaled_dot_product_attention) == mlx_lm_functions
        assert mx.fast.rms_norm is cpu_kernels._MLX_RMS_NORM
        os.environ["TWINLORA_MLX_CPU_KERNELS"] = "0"
        cpu_kernels.forget()
        try:
            assert not cpu_kernels.available() and "TWINLORA_MLX_CPU_KERNELS=0" in cpu_kernels.why_not()
            without = _step(be, batch)
        finally:
            del os.environ["TWINLORA_MLX_CPU_KERNELS"]
            cpu_kernels.forget()
        assert with_kernels[0] == pytest.approx(without[0], rel=1e-5)
        assert with_kernels[1].keys() == without[1].keys()
        for k, g in with_kernels[1].items():
            np.testing.assert_allclose(g, without[1][k], rtol=1e-4, atol=1e-5 * np.abs(g).max())
        assert any((g != without[1][k]).any() for k, g in with_kernels[1].items())   # other arithmetic ran
    assert cpu_kernels.available()


def test_in_model_swaps_only_inside_and_only_when_asked(tiny_model, kernels):
    from test_packing import _with_lora

    be = _with_lora("mlx", tiny_model)
    mod = sys.modules[type(be.model).__module__]
    plain = mod.swiglu
    with cpu_kernels.in_model(be.model, use=False):
        assert mod.swiglu is plain
    with cpu_kernels.in_model(be.model, use=True, attention_too=False):
        assert mod.swiglu is cpu_kernels.swiglu
        assert not getattr(mod.scaled_dot_product_attention, "twinlora_kernel", False)
    with cpu_kernels.in_model(be.model, use=True):
        assert getattr(mod.scaled_dot_product_attention, "twinlora_kernel", False)
    assert mod.swiglu is plain and not cpu_kernels._active


def test_device_choice_uses_kernels_on_the_cpu_only():
    from common.models.devices import mlx_choices

    cpu = mlx_choices("cpu", 128, chunk=256, compiled_rows=2048, kernels_built=True)
    assert cpu.cpu_kernels and "twinlora CPU kernels" in cpu.describe()
    assert not mlx_choices("cpu", 128, chunk=256, compiled_rows=2048).cpu_kernels
    assert "MLX's own CPU ops" in mlx_choices("cpu", 128, chunk=256, compiled_rows=2048).describe()
    assert not mlx_choices("gpu", 128, chunk=256, compiled_rows=2048, kernels_built=True).cpu_kernels


def test_build_says_what_is_missing(monkeypatch, capsys):
    from backends.mlx.cpu_kernels import build

    monkeypatch.setattr(build.shutil, "which", lambda tool: None if tool == "cmake" else "/usr/bin/" + tool)
    assert build.main() == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["twinlora CPU kernels not built: no `cmake` on PATH (Debian: apt-get install cmake g++); "
                   "MLX uses its own ops (slower on a CPU)"]


def test_a_module_for_another_mlx_is_not_used(kernels, monkeypatch):
    monkeypatch.setattr(kernels, "BUILT_FOR_MLX", "0.0.1")
    cpu_kernels.forget()
    try:
        assert not cpu_kernels.available()
        assert cpu_kernels.why_not().startswith(f"built for MLX 0.0.1, this is {mx.__version__}: rebuild them")
    finally:
        monkeypatch.undo()
        cpu_kernels.forget()
    assert cpu_kernels.available()


def test_training_says_when_the_kernels_are_not_built(tiny_model, kernels, monkeypatch):
    """A checkout set up before the kernels existed: training says so in one note, with the fix."""
    from test_packing import _with_lora

    monkeypatch.setattr(cpu_kernels, "_checked", True)
    monkeypatch.setattr(cpu_kernels, "_module", None)
    monkeypatch.setattr(cpu_kernels, "_why", "not built (python -m backends.mlx.cpu_kernels.build; "
                        "scripts/setup.sh runs it)")
    be = _with_lora("mlx", tiny_model)
    assert be.notes == ["twinlora's CPU kernels for MLX are not built (python -m backends.mlx.cpu_kernels.build; "
                        "scripts/setup.sh runs it); MLX uses its own ops, ~1.6x slower on this CPU "
                        "(docs/benchmark-cpu.md)"]
    monkeypatch.setenv("TWINLORA_MLX_CPU_KERNELS", "0")
    cpu_kernels.forget()
    assert _with_lora("mlx", tiny_model).notes == []          # the user's own choice: nothing to say
    monkeypatch.delenv("TWINLORA_MLX_CPU_KERNELS")
    cpu_kernels.forget()
    monkeypatch.undo()
    assert _with_lora("mlx", tiny_model).notes == []          # built: nothing to say
