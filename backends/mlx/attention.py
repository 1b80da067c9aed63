"""Query-chunked attention for long sequences on MLX: memory O(chunk·L) instead of O(L²).

On a CPU, mx.fast.scaled_dot_product_attention materialises the L×L scores of every head, and its
backward holds about 3.5 such tensors: at 8192 tokens on SmolLM2 (9 heads) 2.3 GiB each, ~8 GiB
for one layer even with per-layer checkpointing. Here the queries go through the same fused call
in chunks of common.longseq.ATTENTION_CHUNK rows, each chunk under mx.checkpoint (its scores are
recomputed in the backward pass, as in memory-efficient attention, Rabe & Staats 2021). With the
causal mask a chunk only sees the keys up to its last query (MLX aligns "causal" to the bottom
right), which also skips the masked half of the work. Same math; the softmax of each row is over
the same keys.

mlx-lm's models call `scaled_dot_product_attention` from their own module (imported from
mlx_lm.models.base); `long_attention(model)` swaps that name in the model's module for the
duration of one forward/backward and restores it, so nothing outside our loss sees it.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

import mlx.core as mx


def chunked(inner, chunk: int):
    """An mlx-lm `scaled_dot_product_attention` that runs `inner` on query chunks when that helps."""
    def sdpa(queries, keys, values, cache=None, scale=1.0, mask=None, sinks=None):
        L = queries.shape[2]
        if cache is not None or sinks is not None or L <= chunk or keys.shape[2] != L:
            return inner(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
        outs = []
        for i in range(0, L, chunk):
            j = min(i + chunk, L)
            if isinstance(mask, str):          # "causal": the keys after query j-1 are all masked
                k, v, m = keys[:, :, :j], values[:, :, :j], mask
            else:
                k, v, m = keys, values, (None if mask is None else mask[..., i:j, :])

            def part(q, k, v, m=m):
                return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=m)
            outs.append(mx.checkpoint(part)(queries[:, :, i:j], k, v))
        return mx.concatenate(outs, axis=2)
    sdpa.twinlora_chunked = True
    return sdpa


@contextmanager
def long_attention(model, seq_len: int):
    """Chunked attention in `model`'s module while the block runs, when seq_len is above the chunk."""
    from common.longseq import ATTENTION_CHUNK

    mod = sys.modules.get(type(model).__module__)
    inner = getattr(mod, "scaled_dot_product_attention", None)
    if seq_len <= ATTENTION_CHUNK or inner is None or getattr(inner, "twinlora_chunked", False):
        yield
        return
    mod.scaled_dot_product_attention = chunked(inner, ATTENTION_CHUNK)
    try:
        yield
    finally:
        mod.scaled_dot_product_attention = inner
