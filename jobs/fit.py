"""The step loop, written once: `train` (jobs/trainer.py) and `bench` (benchmarks/bench.py) run it.

One optimizer step is `grad_accumulation` micro-batches (on several processes, micro-batch i goes
to rank i % N), each seeded by (seed, step, micro-batch) only, so dropout does not depend on where
a run was resumed; the token-weighted loss is summed over them and over the ranks; the learning
rate is a pure function of the step (common.training.schedule); the backend then clips and takes the AdamW
step. What happens between steps (logging, validation, checkpoints, early stopping) belongs to the
caller, as callbacks (mlx-lm's `training_callback`, litgpt's fit/validate split).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from backends.base import Backend
from common.training.schedule import lr_at
from jobs.distributed import Dist


@dataclass(frozen=True)
class StepRule:
    """How step `i` is computed: the schedule over `steps`, accumulation, clipping, dropout seeds."""
    steps: int                      # the schedule's length: the run's total steps
    lr: float
    schedule: str = "cosine"
    warmup: int = 0
    min_lr_ratio: float = 0.0
    grad_accumulation: int = 1
    max_grad_norm: float | None = 1.0
    seed: int = 0

    @classmethod
    def from_config(cls, t, steps: int, warmup: int) -> "StepRule":
        """From the config's `training` section, for a run of `steps` with `warmup` warm-up steps."""
        return cls(steps, t.lr, t.schedule, warmup, t.min_lr_ratio, t.grad_accumulation, t.max_grad_norm, t.seed)

    def lr_at(self, step: int) -> float:
        return lr_at(step, self.steps, self.lr, self.schedule, self.warmup, self.min_lr_ratio)

    def dropout_seed(self, step: int, micro_batch: int) -> int:
        return self.seed * 1_000_003 + step + 1_000_000_007 * micro_batch


@dataclass(frozen=True)
class StepReport:
    """One finished step, as the callbacks see it (counts summed over the ranks)."""
    step: int           # steps done, counting from 1
    loss: float         # mean loss per target token
    lr: float
    grad_norm: float    # before clipping
    targets: int
    tokens: int         # non-padding tokens
    slots: int          # padded positions of this rank's micro-batches (the arrays' sizes)
    seconds: float      # the step's wall time, building its batches included
    metrics: dict | None = None  # the objective's metrics, means over the step's pairs (DPO: TRL's names)


@dataclass
class FitState:
    """Where the loop stands, readable after an interrupt: which steps may be saved."""
    completed: int              # steps whose update is applied
    updating: bool = False      # inside apply_gradients: the weights may be half-updated


class Diverged(Exception):
    """The loss or the gradient norm is NaN/inf: the caller says where the last good state is."""

    def __init__(self, what: str, value: float, step: int):
        super().__init__(f"{what} became {value} at step {step}")
        self.what, self.value, self.step = what, value, step


Callback = Callable[[StepReport], "bool | None"]


def fit(be: Backend, batches: Iterator, rule: StepRule, start: int, end: int, *, dist: Dist | None = None,
        callbacks: Sequence[Callback] = (), state: FitState | None = None) -> FitState:
    """Run steps start … end-1. After each step the callbacks run in order; one that returns True
    stops the run there (the later ones do not run for that step)."""
    state = state or FitState(start)
    dist = dist or Dist()
    for step in range(start, end):
        report = train_step(be, batches, rule, step, dist, state)
        if any(cb(report) for cb in callbacks):  # any() stops at the first True
            break
    return state


def train_step(be: Backend, batches: Iterator, rule: StepRule, step: int, dist: Dist, state: FitState) -> StepReport:
    """One optimizer step (0-based `step`): this rank's micro-batches, the sums over the ranks, the update."""
    t0 = time.perf_counter()
    loss_sum, n_targets, n_tokens, slots, sums = 0.0, 0, 0, 0, {}
    for i in range(rule.grad_accumulation):
        b = next(batches)
        if i % dist.world_size != dist.rank:
            continue  # another rank's micro-batch
        be.seed(rule.dropout_seed(step, i))
        # this rank's last micro-batch of the step: DDP/FSDP reduce the gradients in its backward
        s, n = be.accumulate(b, sync=i + dist.world_size >= rule.grad_accumulation)
        loss_sum, n_targets, n_tokens, slots = loss_sum + s, n_targets + n, n_tokens + b.n_tokens, slots + b.ids.size
        for k, v in getattr(be, "objective_sums", {}).items():
            sums[k] = sums.get(k, 0.0) + v
    if sums:   # an objective with metrics (DPO): their sums travel with the counters
        loss_sum, n_targets, n_tokens, sums = dist.all_reduce(be, loss_sum, n_targets, n_tokens, sums)
    else:
        loss_sum, n_targets, n_tokens = dist.all_reduce(be, loss_sum, n_targets, n_tokens)
    loss = loss_sum / max(n_targets, 1)
    if not math.isfinite(loss):
        raise Diverged("loss", loss, step + 1)
    lr = rule.lr_at(step)
    state.updating = True
    gnorm = be.apply_gradients(lr, n_targets, rule.max_grad_norm)
    state.completed, state.updating = step + 1, False
    if not math.isfinite(gnorm):
        raise Diverged("gradient norm", gnorm, step + 1)
    metrics = {k: v / max(n_targets, 1) for k, v in sums.items()} or None
    return StepReport(step + 1, loss, lr, gnorm, n_targets, n_tokens, int(slots), time.perf_counter() - t0, metrics)
