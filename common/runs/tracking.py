"""Experiment tracking (`training.report_to`, as transformers' `report_to`): the run's metrics go to
well-kept writers besides log.jsonl.

- csv: `metrics.csv`, one row per logged step (step, loss, lr, grad_norm, tokens_per_s, val_loss),
  rewritten atomically from log.jsonl, so it always matches the log (also after --resume);
- tensorboard: event files in `tensorboard/` through tensorboardX's SummaryWriter (no TensorFlow,
  no torch needed, so MLX runs log too); tags as transformers writes them (train/loss,
  train/learning_rate, train/grad_norm, eval/loss); on --resume `purge_step` drops the events a
  killed attempt wrote past the checkpoint, so the curves have no duplicates;
- wandb, mlflow: used when installed (a clear error otherwise), through their own clients.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import os
from pathlib import Path

from common.errors import ConfigError

KNOWN = ("csv", "tensorboard", "wandb", "mlflow")
PACKAGES = {"tensorboard": "tensorboardX", "wandb": "wandb", "mlflow": "mlflow"}
CSV_COLUMNS = ("step", "loss", "lr", "grad_norm", "tokens_per_s", "val_loss")


def check_report_to(value, problems: list[str]) -> list[str]:
    """Normalise `training.report_to` to a list of names ("none" → []); unknown names are problems."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value or [])
    names = [n for n in names if n and n != "none"]
    for n in names:
        if n not in KNOWN:
            problems.append(f"training.report_to: {n!r} is not one of {', '.join(KNOWN)}, none")
    return names


def check_installed(names: list[str]) -> None:
    """Refuse a tracker whose client is not installed, before any long work starts."""
    for n in names:
        pkg = PACKAGES.get(n)
        if pkg and importlib.util.find_spec(pkg) is None:
            raise ConfigError(f"{n} is not installed on this machine", where="training.report_to",
                              fix=f"pip install {pkg}, or remove {n} from training.report_to")


def csv_text(log_rows: list[dict]) -> str:
    """metrics.csv from the run's log: one row per step that has a train or eval record."""
    by_step: dict[int, dict] = {}
    for r in log_rows:
        if r.get("event") == "train":
            by_step.setdefault(r["step"], {}).update(
                step=r["step"], loss=r["loss"], lr=r["lr"], grad_norm=r.get("grad_norm"),
                tokens_per_s=r.get("tokens_per_s"))
        elif r.get("event") == "eval":
            by_step.setdefault(r["step"], {}).update(step=r["step"], val_loss=r["val_loss"])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(by_step[s] for s in sorted(by_step))
    return buf.getvalue()


class Trackers:
    """The writers named in report_to; `log(record)` takes the trainer's train/eval records."""

    def __init__(self, names: list[str], run, config: dict, purge_step: int | None, label: str):
        self.names, self.run, self.pending = list(names), run, 0
        self.tb = self.wandb = self.mlflow = None
        if "tensorboard" in names:
            from tensorboardX import SummaryWriter
            # event files are named by the second and the host: the suffix keeps a quick resume from
            # overwriting the file of the attempt before it
            self.tb = SummaryWriter(logdir=str(run.path / "tensorboard"), purge_step=purge_step,
                                    filename_suffix=f".{os.getpid()}.{'new' if purge_step is None else purge_step}")
        if "wandb" in names:
            import wandb
            run_id = hashlib.sha256(str(Path(run.path).resolve()).encode()).hexdigest()[:16]
            self.wandb = wandb.init(project="twinlora", name=label, id=run_id, resume="allow",
                                    config=config, dir=str(run.path))
        if "mlflow" in names:
            import mlflow
            self.mlflow = mlflow
            mlflow.start_run(run_name=label)
            mlflow.log_params(_flat(config))

    def log(self, rec: dict) -> None:
        step = rec["step"]
        if rec.get("event") == "train":
            scalars = {"train/loss": rec["loss"], "train/learning_rate": rec["lr"],
                       "train/grad_norm": rec.get("grad_norm"), "train/tokens_per_s": rec.get("tokens_per_s")}
        elif rec.get("event") == "eval":
            scalars = {"eval/loss": rec["val_loss"]}
        else:
            return
        scalars = {k: float(v) for k, v in scalars.items() if v is not None}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in scalars.items()}, step=step)
        self.pending += 1
        if rec.get("event") == "eval" or self.pending >= 20:
            self.flush()

    def flush(self) -> None:
        self.pending = 0
        if "csv" in self.names:
            from common.runs.io import write_text
            write_text(self.run.path / "metrics.csv", csv_text(self.run.read_log()))
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self.flush()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.mlflow is not None:
            self.mlflow.end_run()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
