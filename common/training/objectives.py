"""The training objective (training.objective): what loss a batch gives, chosen from one table.

Why here and not in the backends: the formulas are written once, with arithmetic operators and
`Scores.log_sigmoid` only, so MLX and torch run the same computation. A backend supplies a
`Scores` view of one batch in its own framework (the summed token loss, the per-row summed
completion log-probs of the adapted model and of the reference); an objective returns the summed
loss and metric sums, and `count` says what the fit loop divides them by (summed over
micro-batches and ranks): target tokens for SFT, pairs for DPO — mlx-lm's `(loss, ntoks)`.

DPO is TRL's DPOTrainer (1.16, `_compute_loss`): log-ratios against the reference, the sigmoid
loss `-logsigmoid(beta·Δ)` or IPO's `(Δ/len - 1/(2·beta))²` (TRL divides each side by its
completion length), rewards `beta·log-ratio`, metrics under TRL's names, averaged over pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from common.training.batching import Batch

DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected")


class Scores(Protocol):
    """What an objective may ask of a backend for one batch (framework arrays, not numpy)."""
    batch: Batch

    def token_loss_sum(self) -> Any:
        """Summed cross-entropy over the batch mask (SFT, the backends' long-standing path)."""

    def logps(self) -> Any:
        """[rows] summed log-probs of the masked tokens, adapted model, differentiable."""

    def reference_logps(self) -> Any:
        """[rows] the same for the reference (adapter disabled, or the frozen starting adapter)."""

    def log_sigmoid(self, x) -> Any: ...

    def const(self, values) -> Any:
        """A float32 array of the framework from numpy values."""


@dataclass(frozen=True)
class SFT:
    """Next-token cross-entropy over the completion mask, token-weighted."""
    name = "sft"
    needs_reference = False

    def count(self, batch: Batch) -> int:
        return batch.n_targets

    def loss(self, s: Scores):
        return s.token_loss_sum(), {}


@dataclass(frozen=True)
class DPO:
    """Direct preference optimization on [chosen rows; rejected rows] batches (Batch.pairs)."""
    beta: float = 0.1
    kind: str = "sigmoid"       # sigmoid | ipo
    name = "dpo"
    needs_reference = True

    def count(self, batch: Batch) -> int:
        return batch.pairs

    def loss(self, s: Scores):
        p = s.batch.pairs
        logps, ref = s.logps(), s.reference_logps()
        ratio_c, ratio_r = logps[:p] - ref[:p], logps[p:] - ref[p:]
        if self.kind == "ipo":
            n = s.batch.mask.sum(axis=1).clip(min=1.0)       # TRL: completion tokens of each row
            delta = ratio_c / s.const(n[:p]) - ratio_r / s.const(n[p:])
            per_pair = (delta - 1 / (2 * self.beta)) ** 2
        else:
            per_pair = -s.log_sigmoid(self.beta * (ratio_c - ratio_r))
        reward_c, reward_r = self.beta * ratio_c, self.beta * ratio_r
        sums = {"rewards/chosen": reward_c.sum(), "rewards/rejected": reward_r.sum(),
                "rewards/accuracies": (reward_c > reward_r).sum(), "rewards/margins": (reward_c - reward_r).sum(),
                "logps/chosen": logps[:p].sum(), "logps/rejected": logps[p:].sum()}
        return per_pair.sum(), sums


def objective_from_config(t) -> SFT | DPO:
    """The objective of the config's `training` section (OBJECTIVES is the one table)."""
    return OBJECTIVES[t.objective](t)


OBJECTIVES = {
    "sft": lambda t: SFT(),
    "dpo": lambda t: DPO(t.beta, t.dpo_loss),
}
