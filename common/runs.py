"""A run directory: the resolved config, a JSONL log, a loss plot, checkpoints, the adapter and
a summary a person can read. Checkpoints hold everything exact resume needs."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from common.errors import TrainingError
from common.io import atomic_dir, write_json, write_text

CHECKPOINTS = "checkpoints"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def log_file(self) -> Path:
        return self.path / "log.jsonl"

    def prepare(self, overwrite: bool, resume: bool) -> None:
        """Refuse to clobber an existing run unless --overwrite (start over) or --resume."""
        exists = self.path.exists() and any(self.path.iterdir())
        if exists and not (overwrite or resume):
            raise TrainingError("output directory already exists and is not empty", where=str(self.path),
                                fix="pass --resume to continue it, --overwrite to start over, or another --output")
        if exists and overwrite and not resume:
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict) -> None:
        record = {"time": round(time.time(), 3), **record}
        with open(self.log_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def read_log(self) -> list[dict]:
        if not self.log_file.is_file():
            return []
        rows = []
        for line in self.log_file.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by a kill: ignore it
        return rows

    def truncate_log(self, step: int) -> None:
        """On resume, drop log lines past the checkpoint step (they will be logged again)."""
        rows = [r for r in self.read_log() if r.get("step", 0) <= step or r.get("event") == "resume"]
        write_text(self.log_file, "".join(json.dumps(r) + "\n" for r in rows))

    # ------------------------------------------------------------ checkpoints
    def checkpoint_dirs(self) -> list[Path]:
        root = self.path / CHECKPOINTS
        if not root.is_dir():
            return []
        return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")),
                      key=lambda p: int(p.name.split("-")[1]))

    def save_checkpoint(self, step: int, weights: dict, opt_state: dict, opt_step: int, state: dict, keep: int) -> Path:
        from safetensors.numpy import save_file
        final = self.path / CHECKPOINTS / f"step-{step:06d}"
        with atomic_dir(final) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp / "adapter_model.safetensors"))
            if opt_state:
                save_file({k: np.ascontiguousarray(v) for k, v in opt_state.items()}, str(tmp / "optimizer.safetensors"))
            write_json(tmp / "trainer_state.json", {**state, "step": step, "optimizer_step": opt_step})
        for old in self.checkpoint_dirs()[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, ckpt: Path) -> tuple[dict, dict, dict]:
        from safetensors.numpy import load_file
        state = json.loads((ckpt / "trainer_state.json").read_text())
        weights = load_file(str(ckpt / "adapter_model.safetensors"))
        opt = load_file(str(ckpt / "optimizer.safetensors")) if (ckpt / "optimizer.safetensors").is_file() else {}
        return weights, opt, state

    # ------------------------------------------------------------ plot
    def plot_loss(self) -> Path | None:
        rows = self.read_log()
        train = [(r["step"], r["loss"]) for r in rows if r.get("event") == "train"]
        valid = [(r["step"], r["val_loss"]) for r in rows if r.get("event") == "eval"]
        if not train:
            return None
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(*zip(*train), label="train loss")
        if valid:
            ax.plot(*zip(*valid), "o-", label="validation loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (mean per target token)")
        ax.legend()
        ax.grid(alpha=0.3)
        out = self.path / "loss.png"
        tmp = self.path / ".loss.tmp.png"
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        tmp.replace(out)
        return out
