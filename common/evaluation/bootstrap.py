"""Bootstrap confidence intervals over test items, seeded, paired across systems.

A test split of 60-100 items gives noisy means; the interval says how noisy. Every system is
scored on the same items, so each bootstrap replicate draws one set of item indices and uses it
for all systems ("paired"): the interval of a difference between two systems then reflects only
the items' disagreement, not two independent draws. Percentile intervals (Efron & Tibshirani
1993, ch. 13), as `scipy.stats.bootstrap(method="percentile", paired=True)` computes them; numpy
only, so the shared layer needs no scipy.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


def resample_indices(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot, n) item indices drawn with replacement: the one draw every system shares."""
    if n < 1:
        raise ValueError("bootstrap needs at least one item")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` share of the replicates (linear interpolation, numpy's default)."""
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(replicates, [tail, 100.0 - tail])
    return float(lo), float(hi)


def mean_ci(values: Sequence[float], n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """Mean of per-item values and its bootstrap percentile interval."""
    return paired_bootstrap({"x": values}, n_boot=n_boot, seed=seed, level=level)["systems"]["x"]


def paired_bootstrap(systems: Mapping[str, Sequence[float]], pairs: Sequence[tuple[str, str]] = (),
                     n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """Per-system mean with its interval, and for each (a, b) in `pairs` the mean of b − a with
    its interval and the share of replicates where b − a <= 0 (a one-sided bootstrap p-value).

    All systems must score the same items, in the same order (one value per item).
    """
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in systems.items()}
    sizes = {len(a) for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"systems score different numbers of items: {sorted(sizes)}")
    n = sizes.pop()
    idx = resample_indices(n, n_boot, seed)
    reps = {k: a[idx].mean(axis=1) for k, a in arrays.items()}
    out: dict = {"n_items": n, "n_boot": n_boot, "seed": seed, "level": level, "method": "percentile, paired",
                 "systems": {}, "pairs": []}
    for k, a in arrays.items():
        lo, hi = percentile_interval(reps[k], level)
        out["systems"][k] = {"mean": float(a.mean()), "lo": lo, "hi": hi, "n": n}
    for a, b in pairs:
        diff = reps[b] - reps[a]
        lo, hi = percentile_interval(diff, level)
        out["pairs"].append({"a": a, "b": b, "delta": float(arrays[b].mean() - arrays[a].mean()), "lo": lo, "hi": hi,
                             "p_not_better": float(np.mean(diff <= 0))})
    return out


def overlap(x: Mapping[str, float], y: Mapping[str, float]) -> bool:
    """Whether two {lo, hi} intervals share a point."""
    return x["lo"] <= y["hi"] and y["lo"] <= x["hi"]
