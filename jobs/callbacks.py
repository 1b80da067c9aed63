"""What the training job does between steps: the callbacks of the fit loop (jobs/fit.py), in the
order they run after each step: `Meter` (log.jsonl, trackers, the console line with tok/s and
ETA), `Validation` (every eval_every steps: the loss, adapter-best/, early stopping), `Checkpoints`
(every save_every steps), and a test hook that slows the steps down. A callback returning True
stops the run after that step.

Only rank 0 writes (`Outputs.writes`). Under FSDP the weights live in shards: a forward pass
(validation) and reading the weights (checkpoints, adapters) are collectives that every rank runs.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

from backends.base import Backend
from common.adapters.format import AdapterSpec, non_finite, save_common
from common.errors import TrainingError
from common.runs.run_dir import RunDir
from common.runs.tracking import Trackers
from jobs.fit import StepReport
from jobs.validation import BestTracker, validate


@dataclass
class Outputs:
    """Where a run reports: its directory and trackers (rank 0 only), the console, the adapter files."""
    run: RunDir
    writes: bool
    echo: Callable
    trackers: Trackers | None
    spec: AdapterSpec
    meta: dict                       # twinlora.json without the metrics
    mlx_keys: list[str] | None       # mlx-lm's own adapter files are written too when given

    def log(self, rec: dict) -> None:
        if self.writes:
            self.run.log(rec)
            self.trackers.log(rec)

    def save_adapter(self, name: str, weights: dict, metrics: dict) -> None:
        if self.writes:
            save_common(self.run.path / name, self.spec, weights, {**self.meta, "metrics": metrics},
                        mlx_keys_list=self.mlx_keys)


def diverged(run: RunDir, what: str, value, step: int) -> TrainingError:
    """NaN/inf loss, gradient norm or weights: stop and point at the last good checkpoint."""
    good = run.checkpoint_dirs()
    return TrainingError(f"{what} became {value} at step {step}; stopped. Last good checkpoint: "
                         f"{good[-1] if good else 'none'}", where=str(run.path),
                         fix="lower training.lr, check the data, then --resume from the last good checkpoint")


def _fmt_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _rewards(metrics: dict | None) -> str:
    """'acc 0.75  margin 0.123  ' for a DPO step or validation ('' for SFT)."""
    if not metrics or "rewards/accuracies" not in metrics:
        return ""
    return f"acc {metrics['rewards/accuracies']:.2f}  margin {metrics['rewards/margins']:.3f}  "


class Meter:
    """Tokens, step times and the last loss; logs every `log_every` steps and the last one."""

    def __init__(self, out: Outputs, steps: int, start: int, log_every: int, last_loss: float | None):
        self.out, self.steps, self.start, self.log_every = out, steps, start, log_every
        self.last_loss, self.tokens, self.step_times, self.t0 = last_loss, 0, [], time.time()

    def restart_clock(self) -> None:
        """The run's clock starts after the validation before training."""
        self.t0 = time.time()

    def elapsed(self) -> float:
        return time.time() - self.t0

    def __call__(self, r: StepReport) -> None:
        self.last_loss = r.loss
        self.step_times.append(r.seconds)
        self.tokens += r.tokens
        if r.step % self.log_every and r.step != self.steps:
            return
        elapsed = self.elapsed()
        tps = self.tokens / max(elapsed, 1e-9)
        eta = elapsed / (r.step - self.start) * (self.steps - r.step)
        self.out.log({"event": "train", "step": r.step, "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm,
                      "targets": r.targets, "tokens": r.tokens, "tokens_per_s": tps, "step_s": r.seconds,
                      **(r.metrics or {})})
        self.out.echo(f"step {r.step}/{self.steps}  loss {r.loss:.4f}  lr {r.lr:.2e}  grad {r.grad_norm:.3f}  "
                      + _rewards(r.metrics) + f"{tps:,.0f} tok/s  ETA {_fmt_eta(eta)}")


class Validation:
    """Validation loss before training, every eval_every steps and after training; the best
    adapter (adapter-best/) and early stopping through `BestTracker`."""

    def __init__(self, out: Outputs, be: Backend, data: list, t, pad_id: int, steps: int, tracker: BestTracker,
                 active: bool, dry_run: bool, last: float | None):
        self.out, self.be, self.data, self.t, self.pad_id, self.steps = out, be, data, t, pad_id, steps
        self.tracker, self.active, self.dry_run = tracker, active, dry_run
        self.last = last  # the latest validation loss (saved in checkpoints)
        self.metrics: dict = {}  # the objective's metrics of the latest validation (DPO: rewards/…)

    def run(self, label: str = "") -> float:
        """One validation pass (announced on the console when `label` names it)."""
        echo = self.out.echo if label else None
        self.metrics = {}
        return validate(self.be, self.data, self.t.batch_size, self.pad_id, echo, label, self.metrics)

    def record(self) -> dict:
        """The latest validation's metrics as log fields (val_rewards/accuracies, …)."""
        return {f"val_{k}": v for k, v in self.metrics.items()}

    def before_training(self) -> None:
        self.tracker.baseline = self.run("before training")
        self.tracker.baseline_metrics = dict(self.metrics) or None
        self.out.log({"event": "eval", "step": 0, "val_loss": self.tracker.baseline, **self.record()})
        self.out.echo(f"step 0/{self.steps}  validation loss {self.tracker.baseline:.4f} "
                      + _rewards(self.metrics) + "(before training)")

    def keep_best(self, at: int, loss: float) -> None:
        """Record a validation; write adapter-best/ when it is the best so far (under FSDP every
        rank gathers the weights). With eval_every 0 the only validation after training is the
        last step's: adapter/ is the best, no copy is written."""
        if self.tracker.update(at, loss) and self.t.keep_best and self.t.eval_every:
            self.out.save_adapter("adapter-best", self.be.lora_weights(),
                                  {"val_loss": loss, "step": at, "best_of": "validation loss"})

    def __call__(self, r: StepReport) -> bool:
        t, done = self.t, r.step
        if not (self.active and t.eval_every and done % t.eval_every == 0 and done != self.steps):
            return False
        loss = self.last = self.run()
        self.out.log({"event": "eval", "step": done, "val_loss": loss, **self.record()})
        if not self.dry_run:
            self.keep_best(done, loss)
        self.out.echo(f"step {done}/{self.steps}  validation loss {self.tracker.describe(loss)}  " + _rewards(self.metrics))
        tr = self.tracker
        if tr.stopped_at is None:
            return False
        self.out.echo(f"[twinlora] early stopping at step {done}: {tr.bad} validations without an improvement "
                      f"> {t.early_stopping_min_delta:g} (patience {t.early_stopping_patience}); best "
                      f"{tr.best:.4f} at step {tr.best_step}")
        return True


class Checkpoints:
    """Adapter weights, optimizer moments and the data position every save_every steps, so that
    `--resume` continues exactly (and from the last one after an interrupt)."""

    def __init__(self, out: Outputs, be: Backend, t, steps: int, extra: dict, meter: Meter, validation: Validation,
                 active: bool):
        self.out, self.be, self.t, self.steps, self.extra = out, be, t, steps, extra
        self.meter, self.validation, self.active = meter, validation, active

    def __call__(self, r: StepReport) -> None:
        t, done = self.t, r.step
        if self.active and t.save_every and done % t.save_every == 0 and done != self.steps:
            self.save(done)

    def save(self, at: int, weights: dict | None = None):
        """Save step `at` (rank 0); under FSDP every rank calls it to gather the weights.
        `weights`: the adapter weights when the caller has already read them."""
        opt, ostep = self.be.optimizer_state()
        weights = self.be.lora_weights() if weights is None else weights
        if not self.out.writes:
            return None
        bad = non_finite(weights)
        if bad:  # never write a poisoned checkpoint: the last good one stays the last one
            raise diverged(self.out.run, f"LoRA weight {bad}", "non-finite (NaN/inf)", at)
        state = {"total_steps": self.steps, "last_loss": self.meter.last_loss, "val_loss": self.validation.last,
                 "micro_batches_done": at * self.t.grad_accumulation, **self.extra,
                 "validation": self.validation.tracker.state()}
        return self.out.run.save_checkpoint(at, weights, opt, ostep, state, self.t.keep_checkpoints)


def step_delay() -> list:
    """Test hook (tests/test_resume.py): TWINLORA_TEST_STEP_DELAY seconds of sleep after each step,
    so that a test can kill a run mid-way."""
    delay = float(os.environ.get("TWINLORA_TEST_STEP_DELAY") or 0)
    return [lambda r: time.sleep(delay)] if delay else []
