"""Padding-free (packed) rows on MLX: several samples in one row, each attending to itself only
and each with its own positions, as torch's packed rows (position_ids + transformers' block mask).

mlx-lm's models take no position ids: their attention calls `self.rope(x)` (positions 0..L-1)
and their body builds the mask with `create_attention_mask` from their own module. While
`packed_rows` is held, for one model:
- each attention's rope runs once per sample (a slice of the row, from position 0): the same
  kernel on the same positions as the unpacked sample, whatever the family's rope variant;
- the body's `create_attention_mask` returns the block-diagonal causal mask (with the family's
  sliding window, if it asks for one), so no query sees another sample's keys;
- the attention, handed that mask, runs one sample at a time (a causal attention over the sample's
  own queries and keys, whichever attention the device chose): the same values as the masked row,
  for Σ nᵢ² score entries instead of (Σ nᵢ)², what makes packing pay on ragged rows. The device's
  attention choice follows the longest sample (`attention_length`), not the row.
All are restored on exit; nothing outside this model's forward sees them.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

import mlx.core as mx
import numpy as np

from backends.mlx import attention


def sample_spans(position_ids: np.ndarray, length: int) -> list[tuple[int, int]]:
    """[start, end) of each sample within the first `length` positions of a packed row [1, T]."""
    starts = [int(s) for s in np.flatnonzero(position_ids[0, :length] == 0)]
    return list(zip(starts, starts[1:] + [length]))


def block_causal_mask(spans: list[tuple[int, int]], window_size: int | None = None) -> mx.array:
    """[L, L] boolean: query i sees key j when both are in the same sample and j <= i (and i - j <
    window_size, for a sliding-window layer)."""
    seg = np.concatenate([np.full(e - s, k) for k, (s, e) in enumerate(spans)])
    i, j = np.arange(len(seg))[:, None], np.arange(len(seg))[None, :]
    ok = (seg[:, None] == seg[None, :]) & (j <= i)
    if window_size is not None:
        ok &= i - j < window_size
    return mx.array(ok)


def attention_length(position_ids: np.ndarray | None, length: int) -> int:
    """The longest run of queries one attention call sees: the longest sample of a packed row, or the
    row's `length` (a padded batch)."""
    if position_ids is None:
        return length
    return max(e - s for s, e in sample_spans(position_ids, length))


def _per_span(inner, masks: dict, spans):
    """`inner` attention over each sample's slice of the row, when handed one of the block masks
    in `masks` (window size → mask); anything else (another mask, a cache, sinks) goes to `inner`."""
    own_masks: dict = {}                  # (sample length, window) → that sample's windowed causal mask

    def sdpa(queries, keys, values, cache=None, scale=1.0, mask=None, sinks=None):
        window = _window_of(mask, masks, queries.shape[-2])
        if (window is False or cache is not None or sinks is not None or queries.shape[-2] != keys.shape[-2]
                or attention.reusing_forward()):   # the checkpointed recompute's saved results are per call
            return inner(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
        outs = []
        for s, e in spans:
            own = "causal" if window is None or e - s <= window else own_masks.get((e - s, window))
            if own is None:               # built once per sample length and window, not per layer
                own = own_masks[(e - s, window)] = block_causal_mask([(0, e - s)], window)
            outs.append(inner(queries[..., s:e, :], keys[..., s:e, :], values[..., s:e, :],
                              cache=None, scale=scale, mask=own))
        return mx.concatenate(outs, axis=-2)
    return sdpa


def _window_of(mask, masks: dict, length: int):
    """The window size of the block mask `mask` is (None: none), or False when it is not one of them.
    A checkpointed layer's recompute gets its mask back as a new array: with a single mask in the row
    (no sliding-window layers) any [L, L] boolean mask is that one."""
    for window, m in masks.items():
        if m is mask:
            return window
    if len(masks) == 1 and isinstance(mask, mx.array) and mask.dtype == mx.bool_ and mask.shape == (length, length):
        return next(iter(masks))
    return False


def _per_sample(rope, spans):
    def apply(x, offset=0):
        return mx.concatenate([rope(x[..., s:e, :]) for s, e in spans], axis=-2)
    return apply


@contextmanager
def packed_rows(model, position_ids: np.ndarray | None, length: int):
    """Per-sample rope, block-diagonal mask and per-sample attention in `model` for rows of `length`
    tokens while held; nothing is changed when `position_ids` is None (a padded batch). Entered
    after the device's attention is in place (it wraps whichever the model's module holds)."""
    if position_ids is None:
        yield
        return
    spans = sample_spans(position_ids, length)
    ropes = [m for _, m in model.named_modules() if "rope" in m]
    body = sys.modules[type(model.model).__module__]
    inner = body.create_attention_mask
    attn_mod = sys.modules[type(model).__module__]
    sdpa = getattr(attn_mod, "scaled_dot_product_attention", None)
    masks: dict = {}                       # window size → this row's block mask, built once per forward

    def mask(h, cache=None, window_size=None, return_array=False):
        if window_size not in masks:
            masks[window_size] = block_causal_mask(spans, window_size)
        return masks[window_size]

    for m in ropes:                        # an instance attribute shadows the module's child `rope`
        object.__setattr__(m, "rope", _per_sample(m["rope"], spans))
    body.create_attention_mask = mask
    if sdpa is not None:
        attn_mod.scaled_dot_product_attention = _per_span(sdpa, masks, spans)
    try:
        yield
    finally:
        body.create_attention_mask = inner
        if sdpa is not None:
            attn_mod.scaled_dot_product_attention = sdpa
        for m in ropes:
            del m.__dict__["rope"]
