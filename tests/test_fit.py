"""jobs/fit.py, the step loop `train` and `bench` share, on a recording stand-in backend (no
framework): what it seeds, sums and steps, how callbacks stop it, and what NaN raises."""
from __future__ import annotations

import math

import numpy as np
import pytest

from jobs.distributed import Dist
from jobs.fit import Diverged, FitState, StepRule, fit


class Recorder:
    """Counts what the loop asks of a backend; each micro-batch's loss sum is its first id."""

    def __init__(self, gnorm=1.0):
        self.calls, self.gnorm = [], gnorm

    def seed(self, s):
        self.calls.append(("seed", s))

    def accumulate(self, b, sync=True):
        self.calls.append(("accumulate", int(b.ids[0, 0]), sync))
        return float(b.ids[0, 0]), b.n_targets

    def apply_gradients(self, lr, n, clip):
        self.calls.append(("apply", lr, n, clip))
        return self.gnorm


class B:
    def __init__(self, i):
        self.ids, self.n_targets, self.n_tokens = np.full((1, 4), i), 2, 3


def batches():
    i = 0
    while True:
        i += 1
        yield B(i)


RULE = StepRule(steps=4, lr=1e-3, schedule="constant", grad_accumulation=2, max_grad_norm=1.0, seed=7)


def test_one_step_seeds_each_micro_batch_sums_and_updates_once():
    be, reports = Recorder(), []
    state = fit(be, batches(), RULE, 1, 3, callbacks=[reports.append])
    assert state.completed == 3 and not state.updating
    assert be.calls[:5] == [("seed", RULE.dropout_seed(1, 0)), ("accumulate", 1, False),
                            ("seed", RULE.dropout_seed(1, 1)), ("accumulate", 2, True),
                            ("apply", RULE.lr_at(1), 4, 1.0)]
    assert RULE.dropout_seed(1, 1) == 7 * 1_000_003 + 1 + 1_000_000_007
    r = reports[0]
    assert (r.step, r.loss, r.targets, r.tokens, r.slots) == (2, (1 + 2) / 4, 4, 6, 8)
    assert [x.step for x in reports] == [2, 3]


def test_a_rank_runs_its_share_of_the_micro_batches():
    class Pair(Dist):
        def all_reduce(self, be, s, n, k):  # as if the other rank had the same counts
            return 2 * s, 2 * n, 2 * k

    be = Recorder()
    fit(be, batches(), RULE, 0, 1, dist=Pair(rank=1, world_size=2))
    assert be.calls == [("seed", RULE.dropout_seed(0, 1)), ("accumulate", 2, True), ("apply", RULE.lr_at(0), 4, 1.0)]


def test_a_callback_returning_true_stops_after_that_step_and_skips_the_later_ones():
    seen = []
    fit(Recorder(), batches(), RULE, 0, 4, callbacks=[lambda r: r.step == 2, lambda r: seen.append(r.step)])
    assert seen == [1]


@pytest.mark.parametrize("gnorm", [math.nan, math.inf])
def test_a_non_finite_gradient_norm_raises_after_the_update(gnorm):
    state = FitState(0)
    with pytest.raises(Diverged, match="gradient norm") as e:
        fit(Recorder(gnorm), batches(), RULE, 0, 4, state=state)
    assert e.value.step == 1 and state.completed == 1


def test_a_non_finite_loss_raises_before_the_update():
    be = Recorder()
    be.accumulate = lambda b, sync=True: (math.nan, 1)
    state = FitState(0)
    with pytest.raises(Diverged, match="loss"):
        fit(be, batches(), RULE, 0, 4, state=state)
    assert state.completed == 0 and not any(c[0] == "apply" for c in be.calls)
