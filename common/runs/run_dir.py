"""A run directory: the resolved config, a JSONL log, a loss plot, checkpoints, the adapter and
a summary a person can read. Checkpoints hold everything exact resume needs."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from common.errors import TrainingError
from common.runs.io import atomic_dir, disk_full_error, is_disk_full, real_path, sha256_file, write_json, write_text

CHECKPOINTS = "checkpoints"


def plan_run(final: str | Path, overwrite: bool, resume: bool) -> tuple[Path, bool]:
    """Where a training writes, checked before any work: (directory, staged).

    Only a twinlora run (ours: `common.runs.ownership.is_run_dir`) is ever resumed or replaced.
    `--overwrite` never deletes the previous run first: the new run is built beside it in the
    hidden `.NAME.overwrite/` (staged) and replaces it only once complete, so a new run that fails
    or is killed leaves the previous one intact; `--overwrite --resume` continues such an
    interrupted replacement from its last checkpoint."""
    from common.runs.ownership import check_path_writable, is_run_dir
    check_path_writable(final, "--output")  # the text as given: Path("") would read as "."
    final = real_path(final)  # a symlinked run is resumed or replaced at its target, the link kept
    if final.exists() and not final.is_dir():
        raise TrainingError("output path exists and is not a directory", where=str(final),
                            fix="choose another --output")
    if resume and not (final.is_dir() and any(final.iterdir())):  # as transformers' Trainer: no checkpoint, no resume
        raise TrainingError("--resume: there is no run here to continue (the output " +
                            ("is empty)" if final.exists() else "does not exist)"), where=str(final),
                            fix="check --output, or drop --resume to start a new run")
    if not final.exists() or not any(final.iterdir()):
        return final, False
    if not is_run_dir(final):
        raise TrainingError("output directory exists and is not a twinlora run (no twinlora_run.json), so "
                            "twinlora will not resume, replace or write into it", where=str(final),
                            fix=f"choose another --output (e.g. {final.name}-2) or move that directory away")
    whole = final.absolute()  # "." has no name: the staging directory sits beside the run, never in it
    staging = Path(os.path.normpath(whole)).parent / f".{Path(os.path.normpath(whole)).name}.overwrite"
    if staging.exists() and not is_run_dir(staging):
        raise TrainingError("the staging directory of --overwrite exists and is not ours", where=str(staging),
                            fix="move it away")
    if overwrite and resume and staging.exists():
        return staging, True
    if resume:
        return final, False
    if overwrite:
        return staging, True
    raise TrainingError("output directory already exists and is not empty", where=str(final),
                        fix="pass --resume to continue it, --overwrite to start over, or another --output")


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def log_file(self) -> Path:
        return self.path / "log.jsonl"

    def check_free(self, overwrite: bool, resume: bool) -> bool:
        """Refuse to clobber an existing run unless --overwrite (start over) or --resume; writes nothing.
        Returns whether the directory exists and holds something."""
        exists = self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir()))
        if exists and not self.path.is_dir():
            raise TrainingError("output path exists and is not a directory", where=str(self.path),
                                fix="choose another --output")
        if exists and not (overwrite or resume):
            raise TrainingError("output directory already exists and is not empty", where=str(self.path),
                                fix="pass --resume to continue it, --overwrite to start over, or another --output")
        return exists

    def prepare(self, overwrite: bool, resume: bool) -> None:
        """Create the run directory and its marker (a run of ours is emptied first with --overwrite:
        that is the staging directory of `plan_run`, never the user's previous run); see check_free."""
        from common.runs.ownership import is_run_dir, mark_run
        exists = self.check_free(overwrite, resume)
        if exists and overwrite and not resume and is_run_dir(self.path):
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        mark_run(self.path)

    def log(self, record: dict) -> None:
        """Append one line (a log is appended, not rewritten: a line torn by a kill is skipped by read_log)."""
        record = {"time": round(time.time(), 3), **record}
        try:
            with open(self.log_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(self.log_file) from exc
            raise

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
        return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
                       and p.name[5:].isdigit()), key=lambda p: int(p.name.split("-")[1]))

    def clean_stale(self) -> None:
        """Remove what a kill can leave in checkpoints/: `.step-*.tmp` (a checkpoint being written),
        `.step-*.del` (one being pruned); a `.step-N.old` whose `step-N` is missing (killed between
        the two renames of a replacement) is complete and is put back."""
        for p in self.path.glob(".adapter.*.tmp"):  # an adapter export cut by a kill
            shutil.rmtree(p, ignore_errors=True)
        root = self.path / CHECKPOINTS
        if not root.is_dir():
            return
        for p in root.iterdir():
            if not (p.is_dir() and p.name.startswith(".step-")):
                continue
            if p.name.endswith(".old") and not (root / p.name[1:-4]).exists():
                p.replace(root / p.name[1:-4])
            else:
                shutil.rmtree(p, ignore_errors=True)

    def save_checkpoint(self, step: int, weights: dict, opt_state: dict, opt_step: int, state: dict, keep: int) -> Path:
        from safetensors.numpy import save_file
        final = self.path / CHECKPOINTS / f"step-{step:06d}"
        with atomic_dir(final) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp / "adapter_model.safetensors"))
            if opt_state:
                save_file({k: np.ascontiguousarray(v) for k, v in opt_state.items()}, str(tmp / "optimizer.safetensors"))
            files = {f.name: sha256_file(f) for f in sorted(tmp.glob("*.safetensors"))}
            write_json(tmp / "trainer_state.json", {**state, "step": step, "optimizer_step": opt_step, "files": files})
        for old in self.checkpoint_dirs()[:-keep] if keep > 0 else []:
            # rename first: a kill during rmtree leaves a hidden `.step-*.del`, never a half step-N
            gone = old.with_name(f".{old.name}.del")
            old.replace(gone)
            shutil.rmtree(gone, ignore_errors=True)
        return final

    def load_checkpoint(self, ckpt: Path) -> tuple[dict, dict, dict]:
        """Read a checkpoint, checking every file against the sha256 in its trainer_state.json."""
        from safetensors.numpy import load_file
        ckpt = Path(ckpt)
        fix = f"delete {ckpt} to resume from the checkpoint before it, or start over with --overwrite"
        state_file = ckpt / "trainer_state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError) as exc:
            raise TrainingError("checkpoint has no readable trainer_state.json", where=str(state_file), fix=fix) from exc
        for name, digest in state.get("files", {}).items():
            f = ckpt / name
            if not f.is_file():
                raise TrainingError("checkpoint file is missing", where=str(f), fix=fix)
            if sha256_file(f) != digest:
                raise TrainingError("checkpoint file does not match the sha256 in trainer_state.json (damaged)",
                                    where=str(f), fix=fix)
        try:
            weights = load_file(str(ckpt / "adapter_model.safetensors"))
            opt = load_file(str(ckpt / "optimizer.safetensors")) if (ckpt / "optimizer.safetensors").is_file() else {}
        except Exception as exc:
            raise TrainingError(f"cannot read the checkpoint ({exc})", where=str(ckpt), fix=fix) from exc
        return weights, opt, state

    # ------------------------------------------------------------ plot
    def plot_loss(self, title: str | None = None, best_step: int | None = None) -> Path | None:
        """loss.png: the training loss, the validation loss from its step-0 baseline (before
        training) on, the baseline as a dashed line and the best validation marked."""
        rows = self.read_log()
        train = [(r["step"], r["loss"]) for r in rows if r.get("event") == "train"]
        valid = sorted((r["step"], r["val_loss"]) for r in rows if r.get("event") == "eval")
        if not train:
            return None
        from common.evaluation import plots
        fig, (ax,) = plots.figure(7, 4)
        ax.plot(*zip(*train), label="train loss", color="tab:blue", alpha=0.8)
        if valid:
            ax.plot(*zip(*valid), "o-", label="validation loss", color="tab:orange")
            if valid[0][0] == 0:
                ax.axhline(valid[0][1], ls="--", lw=1, color="grey",
                           label=f"validation before training ({valid[0][1]:.3f})")
            best = [v for v in valid if v[0] == best_step]
            if best:
                ax.plot(*best[0], "*", ms=14, color="tab:red", label=f"best (step {best[0][0]}, {best[0][1]:.3f})")
        plots.style(ax, title=title or f"{self.path.name}: loss", xlabel="step",
                    ylabel="loss (mean per target token)")
        return plots.save(fig, self.path / "loss.png")
