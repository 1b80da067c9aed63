"""Deterministic batches as numpy arrays, identical for both backends.

The order is a pure function of (seed, epoch): a permutation per epoch (or length buckets), so a
resumed run that skips `position` micro-batches sees exactly the batches it would have seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from common.training.tokenize import Tokenized


@dataclass
class Batch:
    ids: np.ndarray      # int32 [B, T], right-padded with pad_id
    mask: np.ndarray     # float32 [B, T]: 1 where ids[b, t] is a training target
    n_targets: int       # loss tokens (mask[:, 1:].sum())
    n_tokens: int        # non-padding tokens
    # Packed batches only (None otherwise): int32 [1, T], each sample's positions restarting at 0.
    # The backend must keep samples from attending to each other (see `pack`).
    position_ids: np.ndarray | None = None
    # Preference batches only (training.objective: dpo): rows [0, pairs) are the chosen sequences,
    # rows [pairs, 2·pairs) the rejected ones of the same pairs, as TRL's DataCollatorForPreference.
    pairs: int = 0


def collate(rows: list[Tokenized], pad_id: int) -> Batch:
    T = max(len(r.ids) for r in rows)
    ids = np.full((len(rows), T), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), T), dtype=np.float32)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = r.ids
        mask[i, : len(r.mask)] = r.mask
    return Batch(ids, mask, int(mask[:, 1:].sum()), sum(len(r.ids) for r in rows))


def pack(rows: list[Tokenized]) -> Batch:
    """Padding-free batch: the rows concatenated into one row [1, sum of lengths], with
    position_ids restarting at 0 at each sample (the sample boundaries). A sample's first token
    is never a target, exactly as in `collate` (it would be predicted from the previous sample).
    """
    ids = np.concatenate([np.asarray(r.ids, dtype=np.int32) for r in rows])[None, :]
    mask = np.concatenate([np.asarray(r.mask, dtype=np.float32) for r in rows])[None, :]
    pos = np.concatenate([np.arange(len(r.ids), dtype=np.int32) for r in rows])[None, :]
    mask[pos == 0] = 0.0
    return Batch(ids, mask, int(mask[:, 1:].sum()), int(ids.shape[1]), pos)


def collate_pairs(rows: list, pad_id: int) -> Batch:
    """[chosen rows; rejected rows] of TokenizedPairs in one batch padded to the longest sequence."""
    b = collate([r.chosen for r in rows] + [r.rejected for r in rows], pad_id)
    b.pairs = len(rows)
    return b


def _collator(data: list, pad_id: int):
    """collate for examples, collate_pairs for preference pairs (common.training.pairs.TokenizedPair)."""
    return (lambda rows: collate_pairs(rows, pad_id)) if data and hasattr(data[0], "chosen") else \
        (lambda rows: collate(rows, pad_id))


def _length(r) -> int:
    return max(len(r.chosen.ids), len(r.rejected.ids)) if hasattr(r, "chosen") else len(r.ids)


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
    """Endless micro-batches; `start` skips that many (for exact resume).

    "packed" groups the examples exactly as "padded" does (batch_size examples per micro-batch, same
    order), but concatenates each group into one row without padding (`pack`): the same training,
    less compute. The row holds at most batch_size × data.max_length tokens.
    """
    lengths = [_length(r) for r in data]
    make = pack if mode == "packed" else _collator(data, pad_id)
    epoch, index = 0, 0
    while True:
        for b in epoch_order(len(data), batch_size, seed, epoch, mode, lengths):
            if index >= start:
                yield make([data[i] for i in b])
            index += 1
        epoch += 1


def batches_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def eval_batches(data: list[Tokenized], batch_size: int, pad_id: int) -> Iterator[Batch]:
    make = _collator(data, pad_id)
    for i in range(0, len(data), batch_size):
        yield make(data[i: i + batch_size])
