"""Padding-free (packed) rows on MLX: several samples in one row, each attending to itself only
and each with its own positions, as torch's packed rows (position_ids + transformers' block mask).

mlx-lm's models take no position ids: their attention calls `self.rope(x)` (positions 0..L-1)
and their body builds the mask with `create_attention_mask` from their own module. While
`packed_rows` is held, for one model:
- each attention's rope runs once per sample (a slice of the row, from position 0): the same
  kernel on the same positions as the unpacked sample, whatever the family's rope variant;
- the body's `create_attention_mask` returns the block-diagonal causal mask (with the family's
  sliding window, if it asks for one), so no query sees another sample's keys.
Both are restored on exit; nothing outside this model's forward sees them.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

import mlx.core as mx
import numpy as np


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


def _per_sample(rope, spans):
    def apply(x, offset=0):
        return mx.concatenate([rope(x[..., s:e, :]) for s, e in spans], axis=-2)
    return apply


@contextmanager
def packed_rows(model, position_ids: np.ndarray | None, length: int):
    """Per-sample rope and block-diagonal mask in `model` for rows of `length` tokens while held;
    nothing is changed when `position_ids` is None (a padded batch)."""
    if position_ids is None:
        yield
        return
    spans = sample_spans(position_ids, length)
    ropes = [m for _, m in model.named_modules() if "rope" in m]
    body = sys.modules[type(model.model).__module__]
    inner = body.create_attention_mask

    def mask(h, cache=None, window_size=None, return_array=False):
        return block_causal_mask(spans, window_size)

    for m in ropes:                        # an instance attribute shadows the module's child `rope`
        object.__setattr__(m, "rope", _per_sample(m["rope"], spans))
    body.create_attention_mask = mask
    try:
        yield
    finally:
        body.create_attention_mask = inner
        for m in ropes:
            del m.__dict__["rope"]
