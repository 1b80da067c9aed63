"""The SFT gradient step compiled once per shape bucket and kept across steps, as mlx-lm compiles
its step (`mx.compile` over the model's state), for rows below attention.COMPILED_ROWS (the long
rows compile per step, backends/mlx/attention.py).

MLX retraces a compiled function for every new input shape; a batch's width and its count of
target tokens change every step, so the inputs are padded to buckets first: the width to
1 + a multiple of ROW_MULTIPLE (padding on the right: causal, and never a target, it changes no
real position), the target indices to a multiple of TARGET_MULTIPLE (the extra indices point at
position 0 with weight 0). A run then traces a handful of shapes and reuses them.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np

from common.batching import Batch

ROW_MULTIPLE = 16
TARGET_MULTIPLE = 128


def _up(n: int, m: int) -> int:
    return -(-n // m) * m


def bucketed(batch: Batch) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """(ids, mask, target indices, target weights) of `batch` padded to the buckets."""
    rows, width = batch.ids.shape
    wide = 1 + _up(width - 1, ROW_MULTIPLE)
    ids = np.zeros((rows, wide), np.int32)
    mask = np.zeros((rows, wide), np.float32)
    ids[:, :width], mask[:, :width] = batch.ids, batch.mask
    keep = np.flatnonzero(mask[:, 1:].reshape(-1) > 0).astype(np.int32)
    n = _up(max(len(keep), 1), TARGET_MULTIPLE)
    weight = np.zeros(n, np.float32)
    weight[: len(keep)] = 1.0
    keep = np.pad(keep, (0, n - len(keep)))
    return mx.array(ids), mx.array(mask), mx.array(keep), mx.array(weight)


def cached_step(model, loss_sum):
    """value_and_grad of `loss_sum(model, ids, mask, keep, weight)` w.r.t. the model's trainable
    parameters, compiled with the model's state (and the random state: LoRA dropout) as implicit
    inputs and outputs."""
    import mlx.nn as nn
    state = [model.state, mx.random.state]
    grad = nn.value_and_grad(model, loss_sum)
    return mx.compile(lambda ids, mask, keep, weight: grad(model, ids, mask, keep, weight),
                      inputs=state, outputs=state)
