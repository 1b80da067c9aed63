"""twinlora's CPU kernels for MLX (kernels.cpp): SwiGLU, GELU (tanh form), RMSNorm, the loss's
log-sum-exp and the attention's softmax, vectorised and spread over the cores, where MLX's CPU
backend computes them one float at a time on one thread.

Built on the user's machine by scripts/setup.sh (`python -m backends.mlx.cpu_kernels.build`); when
they are not built, were built for another MLX, or MLX does not run on the CPU, every function
here is MLX's own op (`available()` says which, `why_not()` why). Whether a step uses them is the
device's choice (common/models/devices.py: `cpu_kernels`); TWINLORA_MLX_CPU_KERNELS=0 turns them
off (the before/after benchmarks).

`in_model(model, use)` swaps, in the model's module, mlx-lm's `swiglu` (llama, qwen2, qwen3), the
`nn` it calls `nn.gelu_approx` on (gemma3_text) and, unless the chunked attention runs, its
`scaled_dot_product_attention` for the kernels' versions while a block runs (as
backends/mlx/attention.long_attention swaps the attention), and `mx.fast.rms_norm` (every family's
norms call it), and routes `cross_entropy` through the kernel's log-sum-exp; outside such a block
all are MLX's and mlx-lm's own.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.activations import swiglu as _mlx_lm_swiglu

_MLX_RMS_NORM = mx.fast.rms_norm      # MLX's own, kept before any block swaps it
BUILD = "python -m backends.mlx.cpu_kernels.build"
_module = None
_why: str | None = None
_checked = False
_active = False


def forget() -> None:
    """Decide again whether to use the module (after a build, or TWINLORA_MLX_CPU_KERNELS changed).
    A module already imported stays imported (an extension module is not loaded twice)."""
    global _module, _why, _checked
    _module, _why, _checked = None, None, False


def turned_off() -> bool:
    """The user turned them off (TWINLORA_MLX_CPU_KERNELS=0)."""
    return os.environ.get("TWINLORA_MLX_CPU_KERNELS", "1") == "0"


def load():
    """The compiled module, or None (why_not() says why)."""
    global _module, _why, _checked
    if _checked:
        return _module
    _checked = True
    if turned_off():
        _why = "turned off (TWINLORA_MLX_CPU_KERNELS=0)"
        return None
    try:
        from backends.mlx.cpu_kernels import _cpu_kernels as k
    except ModuleNotFoundError:
        _why = f"not built ({BUILD}; scripts/setup.sh runs it)"
        return None
    except ImportError as e:
        _why = f"built but not loadable ({e}); rebuild them ({BUILD})"
        return None
    if k.BUILT_FOR_MLX != mx.__version__.split(".dev")[0]:
        _why = f"built for MLX {k.BUILT_FOR_MLX}, this is {mx.__version__}: rebuild them ({BUILD})"
        return None
    try:                                     # the module and mlx.core must share nanobind's internals
        mx.eval(k.silu_mul(mx.zeros((1,)), mx.zeros((1,))))
    except Exception as e:                   # noqa: BLE001 — any failure means: do not use them
        _why = f"built but unusable here ({type(e).__name__}: {e}); rebuild them ({BUILD})"
        return None
    _module = k
    return k


def available() -> bool:
    return load() is not None


def why_not() -> str:
    load()
    return _why or ""


def _fits(*arrays) -> bool:
    return _active and all(a.dtype == mx.float32 for a in arrays) and mx.default_device() == mx.cpu


def swiglu(gate: mx.array, x: mx.array) -> mx.array:
    """mlx-lm's swiglu, silu(gate)·x; the kernel inside an `in_model` block on float32 inputs."""
    if _fits(gate, x) and gate.shape == x.shape:
        return _module.silu_mul(gate, x)
    return _mlx_lm_swiglu(gate, x)


def gelu_approx(x: mx.array) -> mx.array:
    """mlx's nn.gelu_approx; the kernel inside an `in_model` block on float32 input."""
    if _fits(x):
        return _module.gelu_approx(x)
    return nn.gelu_approx(x)


def rms_norm(x: mx.array, weight: mx.array | None, eps: float) -> mx.array:
    """mx.fast.rms_norm; the kernel inside an `in_model` block on float32 inputs with a weight."""
    if weight is not None and _fits(x, weight) and weight.ndim == 1 and x.ndim >= 1 and weight.shape[0] == x.shape[-1]:
        return _module.rms_norm(x, weight, eps)
    return _MLX_RMS_NORM(x, weight, eps)


class _NNWithKernels:
    """mlx.nn as a model's module sees it inside an `in_model` block: gelu_approx is the kernel's."""
    gelu_approx = staticmethod(gelu_approx)

    def __getattr__(self, name):
        return getattr(nn, name)


def logsumexp(x: mx.array) -> mx.array:
    """log-sum-exp over the last axis."""
    if _fits(x) and x.ndim >= 1 and x.shape[-1]:
        return _module.logsumexp(x)
    return mx.logsumexp(x, axis=-1)


def cross_entropy(logits: mx.array, targets: mx.array, reduction: str = "none") -> mx.array:
    """nn.losses.cross_entropy over the last axis with class-index targets (no weights, no smoothing):
    log-sum-exp − the target's logit, the same formula."""
    if not _fits(logits):
        return nn.losses.cross_entropy(logits, targets, reduction=reduction)
    picked = mx.take_along_axis(logits, mx.expand_dims(targets, -1), axis=-1).squeeze(-1)
    loss = logsumexp(logits) - picked
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


def _mask_for_groups(mask: mx.array, heads: int, groups: int) -> mx.array:
    """An SDPA mask ([L, S] or [B|1, heads|1, L, S]) shaped for scores [B, groups, heads/groups, L, S]."""
    if mask.ndim == 2:
        return mask
    if mask.shape[1] == 1:
        return mx.expand_dims(mask, 2)
    return mask.reshape(mask.shape[0], groups, heads // groups, *mask.shape[2:])


def attention(inner):
    """An mlx-lm `scaled_dot_product_attention` whose softmax is the kernel's: q·kᵀ·scale, the mask
    (a causal one inside the kernel, no L×L mask built), softmax, ·v, grouped-query heads
    broadcast as mx.fast does. Anything else (a quantized cache, attention sinks, a non-float32
    input, outside an `in_model` block) goes to `inner`."""
    def sdpa(queries, keys, values, cache=None, scale=1.0, mask=None, sinks=None):
        plain_mask = mask is None or (isinstance(mask, str) and mask == "causal") or \
            (isinstance(mask, mx.array) and mask.ndim in (2, 4))
        if hasattr(cache, "bits") or sinks is not None or not plain_mask or not _fits(queries, keys, values):
            return inner(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
        B, H, L, D = queries.shape
        groups = keys.shape[1]
        q = (queries * scale).reshape(B, groups, H // groups, L, D)
        scores = q @ mx.expand_dims(keys, 2).swapaxes(-1, -2)            # [B, groups, heads/group, L, S]
        if isinstance(mask, mx.array):
            m = _mask_for_groups(mask, H, groups)
            scores = mx.where(m, scores, -mx.inf) if m.dtype == mx.bool_ else scores + m
        p = _module.softmax(scores, causal=isinstance(mask, str))
        return (p @ mx.expand_dims(values, 2)).reshape(B, H, L, values.shape[-1])
    sdpa.twinlora_kernel = True
    return sdpa


@contextmanager
def switched_on():
    """While the block runs, this module's functions (swiglu, gelu_approx, rms_norm, cross_entropy,
    the attention) use the kernels, when they are built; nothing in any model is swapped."""
    global _active
    if _active or load() is None:
        yield
        return
    _active = True
    try:
        yield
    finally:
        _active = False


@contextmanager
def in_model(model, use: bool, attention_too: bool = True):
    """While the block runs: the kernels for `model`'s SwiGLU (llama, qwen2, qwen3) or GELU
    (gemma3_text), its RMSNorms, `cross_entropy`, and (`attention_too`: the chunked attention is not
    in use) the attention's softmax, when `use` (the device's choice) and they are built."""
    if not use or _active or load() is None:
        yield
        return
    mod = sys.modules.get(type(model).__module__)
    swaps = {"swiglu": swiglu, "nn": _NNWithKernels()}
    inner = getattr(mod, "scaled_dot_product_attention", None)
    if attention_too and inner is not None and not getattr(inner, "twinlora_chunked", False):
        swaps["scaled_dot_product_attention"] = attention(inner)
    before = {name: getattr(mod, name) for name in swaps if hasattr(mod, name)}
    if before.get("nn") is not nn:           # a module with some other `nn` keeps it
        before.pop("nn", None)
    for name in before:
        setattr(mod, name, swaps[name])
    mx.fast.rms_norm = rms_norm              # nn.RMSNorm and gemma3_text's RMSNorm call it through mx.fast
    try:
        with switched_on():
            yield
    finally:
        mx.fast.rms_norm = _MLX_RMS_NORM
        for name, value in before.items():
            setattr(mod, name, value)
