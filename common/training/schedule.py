"""The learning-rate schedule both backends use: a pure function of the step."""
from __future__ import annotations

import math


def warmup_steps(total: int, warmup_steps_cfg: int, warmup_ratio: float) -> int:
    return warmup_steps_cfg if warmup_steps_cfg > 0 else int(round(warmup_ratio * total))


def lr_at(step: int, total: int, peak: float, schedule: str, warmup: int = 0, min_ratio: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup to `peak` over `warmup`
    steps (step 0 gets peak/warmup, as transformers does), then cosine/linear decay to
    `min_ratio * peak` at `total`, or constant."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    floor = peak * min_ratio
    if schedule == "linear":
        return floor + (peak - floor) * (1.0 - progress)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
