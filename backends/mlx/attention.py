"""Memory-efficient attention for long sequences on MLX: FlashAttention-2's algorithm over query chunks.

On a CPU, mx.fast.scaled_dot_product_attention materialises the L×L scores of every head, and its
backward holds about 3.5 such tensors: at 8192 tokens on SmolLM2 (9 heads) 2.3 GiB each. Here the
queries run in chunks of common.training.longseq.ATTENTION_CHUNK rows (Dao 2023, "FlashAttention-2", §3.1,
written with MLX ops rather than as a kernel):
- the forward keeps only each row's log-sum-exp besides the output; the backward recomputes one
  chunk's probabilities from it, exp(s − lse), so only one chunk's scores exist at a time;
- the chunks run one after another (`mx.depends` chains each chunk to the previous one's results:
  MLX would otherwise schedule several chunks' backward at once, measured 3.2 GiB instead of ~1.2
  for one layer at 8192 tokens);
- with the causal mask a chunk sees the keys up to its last query only, and only its diagonal
  block needs the mask (the keys before it are all visible);
- the backward's scores matmul subtracts the log-sum-exp itself ([q | −lse]·[k | 1]ᵀ): one pass
  less over each chunk's scores;
- on a CPU the exponentials avoid MLX's `exp` and `power`, which call scalar libm code (~20 and
  ~7 ns per float here; they were most of an 8192-token step). MLX compiles fused element-wise
  kernels on a CPU to C++ loops that g++ vectorises, as long as a kernel's inputs are contiguous
  and its chain stays within MLX's fusion depth (11); e^x = (2^(x·log2 e / 64))^64 is computed as
  a degree-6 polynomial for 2^z on [-1, 0] (Horner: a single-use chain, which fuses) and six
  squarings, clamped at 2^-64 (zero below: masked keys stay exactly zero). Largest relative error
  1.3e-5 against float64, from the squarings (`power`: 3.7e-6). It only fuses where the graph is
  compiled: inside an uncompiled `mx.grad` MLX runs a compiled function's ops one by one (its
  inputs are tracers), so the backend compiles its gradient step for long rows and an uncompiled
  gradient uses `power`. Off the CPU, `mx.exp`. Which exponential (`exp`: "poly", "power", "exp"),
  whether to chunk and whether to compile are decided per device in common/models/devices.py.
  `python -m benchmarks.mlx_attention --exp` times the three.

With per-layer gradient checkpointing the layer recompute would run the attention forward a third
time; `long_attention(..., reuse_forward=True)` keeps each layer's attention output and
log-sum-exp (L·d + L·h floats per layer, 19 MB at 8192 tokens on SmolLM2) from the forward pass
and hands them to the recompute instead (selective activation checkpointing, as Korthikanti et al.
2022 and PyTorch's checkpoint policies): same values, one attention forward fewer per layer.

mlx-lm's models call `scaled_dot_product_attention` from their own module (imported from
mlx_lm.models.base); `long_attention(model)` swaps that name in the model's module for the
duration of one forward/backward and restores it, so nothing outside our loss sees it.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

import mlx.core as mx

LOG2E = 1.4426950408889634
SQUARINGS = 6
# 2^z on [-1, 0]: least squares in relative error, float64 (|error| < 4.5e-9 before float32 rounding)
EXP2_POLY = (0.9999999956, 0.6931469507, 0.2402235657, 0.05548836149, 0.0095757361, 0.001272400118,
             0.0001084171815)


def _exp2_neg(z):
    """2^(64·z) for z in [-1, 0]: Horner's polynomial for 2^z, then six squarings; the clamp's
    2^-64 becomes exactly zero (masked keys stay zero). One chain of single-use values: MLX's fusion
    stops at a value used outside the kernel, and this chain fuses into two kernels."""
    p = EXP2_POLY[-1] * z + EXP2_POLY[-2]
    for c in reversed(EXP2_POLY[:-2]):
        p = p * z + c
    for _ in range(SQUARINGS):
        p = p * p
    return mx.where(p < 2.0 ** (0.5 - 2 ** SQUARINGS), 0.0, p)


@mx.compile
def _exp_fused_cpu(s, m):
    return _exp2_neg(mx.maximum((s - m) * (LOG2E / 2 ** SQUARINGS), -1.0))


@mx.compile
def _exp_power_cpu(s, m):
    return mx.power(2.0, (s - m) * LOG2E)


@mx.compile
def _exp_shifted(s, m):
    return mx.exp(s - m)


@mx.compile
def _softmax_grad(p, dp, d):
    return p * (dp - d)


_ZERO = mx.array(0.0)


EXPS = {"exp": _exp_shifted, "poly": _exp_fused_cpu, "power": _exp_power_cpu}


def _exp(s, m, exp: str):
    """e^(s − m). "poly" where the caller's graph is compiled (or not differentiated), so the
    polynomial's ops fuse; inside an uncompiled `mx.grad` they would run one by one and "power" is
    faster (both for a CPU); "exp" on devices whose `exp` is fast (common/models/devices.py)."""
    return EXPS[exp](s, m)


class _Saved:
    """Attention results of the forward pass, taken back (last in, first out) by the recompute."""

    def __init__(self):
        self.stack: list[tuple] = []
        self.backward = False


_saved: _Saved | None = None


def _blocks(k, v, mask, i: int, j: int, heads: int, rep: int):
    """The key/value blocks the queries [i, j) see, each with its additive bias (None: all visible).
    A bias has the grouped score layout's rank (B, kv heads, rep, queries, keys) or broadcasts to it."""
    if isinstance(mask, str):              # "causal", aligned bottom right as in mx.fast
        n = j - i
        tril = mx.arange(n)[None, :] <= mx.arange(n)[:, None]
        diag = (k[:, :, i:j], v[:, :, i:j], mx.where(tril, 0.0, -mx.inf).astype(mx.float32), i)
        return ([(k[:, :, :i], v[:, :, :i], None, 0)] if i else []) + [diag]
    if mask is None:
        return [(k, v, None, 0)]
    m = mask[..., i:j, :]
    bias = mx.where(m, 0.0, -mx.inf).astype(mx.float32) if m.dtype == mx.bool_ else m.astype(mx.float32)
    if bias.ndim == 4:                     # (B, 1 | heads, queries, keys) → the grouped layout
        bias = (mx.expand_dims(bias, 2) if bias.shape[1] == 1
                else bias.reshape(bias.shape[0], heads // rep, rep, *bias.shape[2:]))
    return [(k, v, bias, 0)]


def _scores(qg, kb, bias, shape5):
    s = (qg @ kb.swapaxes(-1, -2)).astype(mx.float32).reshape(*shape5, kb.shape[2])
    return s if bias is None else s + bias


def _grouped(qc, scale: float, KV: int):
    """(B, H, n, D) → (B, KV, rep·n, D) scaled: the heads that share a kv head side by side (as mx.fast)."""
    B, H, n, D = qc.shape
    return (qc * scale).reshape(B, KV, (H // KV) * n, D)


def _spans(L: int, chunk: int):
    return [(i, min(i + chunk, L)) for i in range(0, L, chunk)]


def _kv_seen(k, v, mask, j: int):
    return (k[:, :, :j], v[:, :, :j]) if isinstance(mask, str) else (k, v)


def _forward(q, k, v, scale: float, mask, chunk: int, exp: str):
    """The output and each row's log-sum-exp, one query chunk after another."""
    B, H, L, D = q.shape
    KV = k.shape[1]
    rep = H // KV
    outs, lses, prev = [], [], []
    for i, j in _spans(L, chunk):
        n = j - i
        qc = mx.depends(q[:, :, i:j], prev) if prev else q[:, :, i:j]
        qg, shape5 = _grouped(qc, scale, KV), (B, KV, rep, n)
        blocks = [(vb, _scores(qg, kb, bias, shape5))
                  for kb, vb, bias, _ in _blocks(*_kv_seen(k, v, mask, j), mask, i, j, H, rep)]
        m = blocks[0][1].max(-1, keepdims=True)
        for _, s in blocks[1:]:
            m = mx.maximum(m, s.max(-1, keepdims=True))
        # p·[v | 1]: the output and the softmax denominator from one matmul (no separate sum pass)
        ol = sum(_exp(s, m, exp).reshape(B, KV, rep * n, -1) @ mx.pad(vb.astype(mx.float32), [(0, 0)] * 3 + [(0, 1)], constant_values=1.0)
                 for vb, s in blocks).reshape(B, KV, rep, n, D + 1)
        l = ol[..., D:]
        o = (ol[..., :D] / l).astype(q.dtype).reshape(B, H, n, D)
        outs.append(o)
        lses.append(m + mx.log(l))
        prev = [o]
    return mx.concatenate(outs, axis=2), mx.concatenate(lses, axis=3)


def _backward(q, k, v, do, o, lse, scale: float, mask, chunk: int, exp: str):
    """dq, dk, dv from the output gradient, recomputing one chunk's probabilities at a time."""
    B, H, L, D = q.shape
    KV = k.shape[1]
    rep = H // KV
    dq_parts, dk, dv, prev = [], mx.zeros(k.shape, mx.float32), mx.zeros(v.shape, mx.float32), []
    k1 = mx.concatenate([k, mx.ones((*k.shape[:3], 1), k.dtype)], axis=-1)   # [k | 1]·[q | −lse] = s − lse
    for i, j in _spans(L, chunk):
        n = j - i
        # the output gradient too: dO·Vᵀ needs nothing else of the chunk, and MLX ran it ahead for all chunks
        qc, doc = mx.depends([q[:, :, i:j], do[:, :, i:j]], prev) if prev else (q[:, :, i:j], do[:, :, i:j])
        qg, shape5 = _grouped(qc, scale, KV), (B, KV, rep, n)
        dog = doc.reshape(B, KV, rep * n, D)
        delta = (doc * o[:, :, i:j]).astype(mx.float32).sum(-1, keepdims=True)
        delta = delta.reshape(B, KV, rep, n, 1)
        # the scores' matmul subtracts the log-sum-exp: one pass less over the chunk's scores
        qg1 = mx.concatenate([qg, -lse[:, :, :, i:j].reshape(B, KV, rep * n, 1).astype(qg.dtype)], axis=-1)
        dq = None
        for kb1, vb, bias, start in _blocks(*_kv_seen(k1, v, mask, j), mask, i, j, H, rep):
            kb = k[:, :, start:start + kb1.shape[2]]
            p = _exp(_scores(qg1, kb1, bias, shape5), _ZERO, exp)
            dp = (dog @ vb.swapaxes(-1, -2)).astype(mx.float32).reshape(p.shape)
            ds = _softmax_grad(p, dp, delta).reshape(B, KV, rep * n, -1)
            p = p.reshape(B, KV, rep * n, -1)
            pad = [(0, 0), (0, 0), (start, L - start - kb.shape[2]), (0, 0)]
            dv = dv + mx.pad(p.swapaxes(-1, -2) @ dog.astype(mx.float32), pad)
            dk = dk + mx.pad(ds.swapaxes(-1, -2) @ qg.astype(mx.float32), pad)
            part = ds @ kb.astype(mx.float32)
            dq = part if dq is None else dq + part
        dq_parts.append((dq * scale).reshape(B, H, n, D))
        prev = [dq_parts[-1], dk, dv]
    return mx.concatenate(dq_parts, axis=2).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def flash_attention(q, k, v, scale: float, mask, chunk: int, saved=None, exp: str = "power"):
    """softmax(q·kᵀ·scale + mask)·v and its log-sum-exp, in query chunks with a recomputing backward.
    mask: None, "causal", or a boolean/additive array broadcastable to (B, heads, L, L); GQA as in
    mx.fast; `exp` as in _exp. `saved` = (output, lse) already computed for these inputs: returned as they are, with
    the same backward (the recompute of a checkpointed layer)."""
    @mx.custom_function
    def attend(q, k, v):
        return saved if saved is not None else _forward(q, k, v, scale, mask, chunk, exp)

    @attend.vjp
    def attend_vjp(primals, cotangents, outputs):
        return _backward(*primals, cotangents[0], outputs[0], outputs[1], scale, mask, chunk, exp)

    return attend(q, k, v)


def chunked(inner, chunk: int, exp: str = "poly"):
    """An mlx-lm `scaled_dot_product_attention` that runs `flash_attention` when that helps."""
    def sdpa(queries, keys, values, cache=None, scale=1.0, mask=None, sinks=None):
        L = queries.shape[2]
        if (cache is not None or sinks is not None or L <= chunk or keys.shape[2] != L
                or (mask is not None and not isinstance(mask, str) and mask.ndim not in (2, 4))):
            return inner(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
        saved = _saved
        if saved is not None and saved.backward and saved.stack:
            o, lse = saved.stack.pop()     # the recompute of a checkpointed layer: the forward's results
            if o.shape == queries.shape:
                return flash_attention(queries, keys, values, scale, mask, chunk, saved=(o, lse), exp=exp)[0]
            saved.stack.clear()
        o, lse = flash_attention(queries, keys, values, scale, mask, chunk, exp=exp)
        if saved is not None and not saved.backward:
            saved.stack.append((o, lse))
        return o
    sdpa.twinlora_chunked = True
    return sdpa


# tokens per row from which a CPU gradient step is compiled (common/models/devices.py): inside `mx.grad` MLX
# runs a compiled function's ops one by one (its inputs are tracers), so the exponentials above would
# be ~20 separate passes; compiling the whole step fuses them (one layer's attention at 8192 tokens,
# forward+backward: 8.9 s with `power`, 6.1 s compiled). Only long rows, where attention is most of
# the step and one compile per step is small beside it.
COMPILED_ROWS = 2048


def reusing_forward() -> bool:
    """True while a `long_attention(reuse_forward=True)` block runs: the chunked attention's forward
    results are kept, one per call, for the checkpointed layers' recompute."""
    return _saved is not None


@contextmanager
def long_attention(model, seq_len: int, reuse_forward: bool = False, exp: str = "poly", use: bool | None = None):
    """Chunked attention in `model`'s module while the block runs, when `use` (the device's choice,
    common/models/devices.py; None: seq_len above the chunk); `reuse_forward` (a gradient step of a model with
    checkpointed layers) hands each layer's attention results from the forward pass to its recompute
    in the backward pass; `exp` the exponential (see _exp)."""
    from common.training.longseq import ATTENTION_CHUNK

    global _saved
    mod = sys.modules.get(type(model).__module__)
    inner = getattr(mod, "scaled_dot_product_attention", None)
    use = seq_len > ATTENTION_CHUNK if use is None else use
    if not use or inner is None or getattr(inner, "twinlora_chunked", False):
        yield None
        return
    mod.scaled_dot_product_attention = chunked(inner, ATTENTION_CHUNK, exp)
    _saved = _Saved() if reuse_forward else None
    try:
        yield _saved
    finally:
        mod.scaled_dot_product_attention = inner
        _saved = None
