"""Deterministic batches as numpy arrays, identical for both backends.

The order is a pure function of (seed, epoch): a permutation per epoch (or length buckets), so a
resumed run that skips `position` micro-batches sees exactly the batches it would have seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from common.tokenize import Tokenized


@dataclass
class Batch:
    ids: np.ndarray      # int32 [B, T], right-padded with pad_id
    mask: np.ndarray     # float32 [B, T]: 1 where ids[b, t] is a training target
    n_targets: int       # loss tokens (mask[:, 1:].sum())
    n_tokens: int        # non-padding tokens


def collate(rows: list[Tokenized], pad_id: int) -> Batch:
    T = max(len(r.ids) for r in rows)
    ids = np.full((len(rows), T), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), T), dtype=np.float32)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = r.ids
        mask[i, : len(r.mask)] = r.mask
    return Batch(ids, mask, int(mask[:, 1:].sum()), sum(len(r.ids) for r in rows))


def epoch_order(n: int, batch_size: int, seed: int, epoch: int, mode: str,
                lengths: list[int] | None = None) -> list[list[int]]:
    """Indices of each batch of one epoch."""
    rng = np.random.default_rng([seed, epoch])
    if mode == "bucketed" and lengths is not None:
        # Sort by length (ties broken randomly), cut into batches, shuffle the batches.
        noise = rng.random(n)
        order = sorted(range(n), key=lambda i: (lengths[i], noise[i]))
        batches = [order[i: i + batch_size] for i in range(0, n, batch_size)]
        return [batches[j] for j in rng.permutation(len(batches))]
    perm = rng.permutation(n).tolist()
    return [perm[i: i + batch_size] for i in range(0, n, batch_size)]


def iterate_batches(data: list[Tokenized], batch_size: int, pad_id: int, seed: int,
                    mode: str = "padded", start: int = 0) -> Iterator[Batch]:
    """Endless micro-batches; `start` skips that many (for exact resume)."""
    lengths = [len(r.ids) for r in data]
    epoch, index = 0, 0
    while True:
        for b in epoch_order(len(data), batch_size, seed, epoch, mode, lengths):
            if index >= start:
                yield collate([data[i] for i in b], pad_id)
            index += 1
        epoch += 1


def batches_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def eval_batches(data: list[Tokenized], batch_size: int, pad_id: int) -> Iterator[Batch]:
    for i in range(0, len(data), batch_size):
        yield collate(data[i: i + batch_size], pad_id)
