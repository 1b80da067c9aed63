"""Evidence that training helped: the validation loss before training (step 0) and after, the best
adapter by validation loss (adapter-best/), and early stopping.

The state (baseline, best loss and step, validations without improvement) is saved in every
checkpoint, so a resumed run makes exactly the decisions the uninterrupted run makes. Rules, as
transformers' EarlyStoppingCallback: a validation *improves* when it is below the best so far by
more than `min_delta`; after `patience` validations in a row that do not, training stops. The best
adapter is the one with the lowest validation loss after step 0 (any drop, whatever min_delta).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from common.training.batching import eval_batches


def validate(be, data, batch_size: int, pad_id: int, echo=None, label: str = "", metrics: dict | None = None) -> float:
    """Mean loss per target token (per pair for DPO) over `data`; prints a start line when `echo` is
    given (a progress bar on stderr when it is a terminal). The caller prints the result, with the
    step it belongs to. `metrics`, when given, receives the objective's metric means (DPO's rewards)."""
    from tqdm import tqdm
    n_batches = -(-len(data) // batch_size)
    if echo:
        echo(f"[twinlora] validation{' ' + label if label else ''}: {len(data)} examples, {n_batches} batches …")
    total, n, sums = 0.0, 0, {}
    for b in tqdm(eval_batches(data, batch_size, pad_id), total=n_batches, desc="validation", leave=False,
                  disable=None, unit="batch"):
        s, k = be.eval_loss(b)
        total, n = total + s, n + k
        for key, v in getattr(be, "objective_sums", {}).items():
            sums[key] = sums.get(key, 0.0) + v
    if metrics is not None:
        metrics.update({key: v / max(n, 1) for key, v in sums.items()})
    return total / max(n, 1)


@dataclass
class BestTracker:
    patience: int | None = None
    min_delta: float = 0.0
    baseline: float | None = None      # validation loss at step 0 (the base model + fresh LoRA)
    baseline_metrics: dict | None = None   # the objective's validation metrics at step 0 (DPO's reward accuracy)
    best: float | None = None
    best_step: int | None = None
    bad: int = 0                       # validations in a row without an improvement > min_delta
    stopped_at: int | None = None      # step at which early stopping ended the run

    def update(self, step: int, loss: float) -> bool:
        """Record a validation after `step`; returns whether it is the new best."""
        improved = self.best is None or loss < self.best - self.min_delta
        self.bad = 0 if improved else self.bad + 1
        is_best = self.best is None or loss < self.best
        if is_best:
            self.best, self.best_step = loss, step
        if self.patience and self.bad >= self.patience:
            self.stopped_at = step
        return is_best

    def state(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("patience", "min_delta")}

    @classmethod
    def from_state(cls, state: dict, patience: int | None, min_delta: float) -> "BestTracker":
        saved = state.get("validation") or {}
        return cls(patience, min_delta, **{k: saved.get(k) for k in ("baseline", "baseline_metrics", "best", "best_step",
                                                                      "stopped_at")}, bad=saved.get("bad", 0))

    def describe(self, loss: float) -> str:
        """'1.234 (before training 2.345, -47.4%; best 1.200 at step 40)'."""
        out = f"{loss:.4f}"
        if self.baseline is not None:
            out += f" (before training {self.baseline:.4f}, {100 * (loss - self.baseline) / self.baseline:+.1f}%"
            out += f"; best {self.best:.4f} at step {self.best_step})" if self.best_step is not None else ")"
        return out
