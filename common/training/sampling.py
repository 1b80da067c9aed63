"""Token sampling shared by both backends: temperature, top-p (nucleus) and a seeded generator.

Why here and not in each library: mlx-lm's `make_sampler` and transformers' `do_sample` draw
from different random generators (and order temperature / top-p filtering slightly differently),
so the same seed would give different text on MLX and PyTorch. Each backend hands the last
position's logits to one `Sampler` (numpy, float64) and takes the token it returns, so the same
seed gives the same text on both wherever their logits agree. Temperature 0 is greedy (argmax).

Semantics (transformers' and mlx-lm's): probabilities = softmax(logits / temperature); top-p keeps
the smallest set of most likely tokens whose probability reaches `top_p` (at least one token),
renormalised; one uniform draw from `numpy.random.default_rng(seed)` per token picks from the
cumulative distribution of the kept tokens in descending order of probability.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import UserError


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def check(self) -> "Sampling":
        if not 0.0 <= self.temperature <= 100.0:
            raise UserError(f"temperature {self.temperature} is out of range", where="--temperature",
                            fix="use 0 (greedy) or a positive value, typically 0.2 to 1.2")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top-p {self.top_p} is out of range", where="--top-p",
                            fix="use a value in (0, 1], e.g. 0.9 (1 keeps every token)")
        return self

    def describe(self) -> str:
        return "greedy" if self.greedy else f"sampled (temperature {self.temperature}, top-p {self.top_p}, seed {self.seed})"


class Sampler:
    """Called once per generated token with that position's logits (1-D); returns the token id."""

    def __init__(self, sampling: Sampling):
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)

    def __call__(self, logits) -> int:
        z = np.asarray(logits, dtype=np.float64).reshape(-1)
        if self.sampling.greedy:
            return int(np.argmax(z))
        z = z / self.sampling.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = len(order)
        if self.sampling.top_p < 1.0:
            keep = int(np.searchsorted(cum, self.sampling.top_p, side="left")) + 1
            keep = min(max(keep, 1), len(order))
        total = cum[keep - 1]
        idx = int(np.searchsorted(cum[:keep], self.rng.random() * total, side="right"))
        return int(order[min(idx, keep - 1)])
