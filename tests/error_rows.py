"""The registry of docs/errors.md rows (`@row("E01")` registers a function that provokes the error
and returns the printed line) and the helpers the row modules share. The rows live in
*_rows.py by topic; tests/test_errors.py imports them all and checks every row against the table."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from helpers import run_cli

ROWS: dict = {}


def row(rid: str):
    def deco(fn):
        assert rid not in ROWS, rid
        ROWS[rid] = fn
        return fn
    return deco


def quiet(*a, **k):
    pass


# ---------------------------------------------------------------- helpers

def expect_error(result, *needles, code: int = 2) -> str:
    """One `error:` line containing every needle, exit `code`, no traceback; returns the line."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = [l for l in result.output.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, result.output
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def refused(ctx, result, *needles, code: int = 2) -> str:
    """`expect_error`, and the refused command wrote nothing at its output (ctx.out)."""
    line = expect_error(result, *needles, code=code)
    assert not ctx.out.exists()
    return line


def no_hidden_leftovers(root: Path) -> None:
    """No temporary file or directory (`.name.*.tmp`, `.name.old`, `.name.del`) anywhere under root."""
    left = list(Path(root).rglob(".*"))  # weight hashes are cached in twinlora's cache, not beside the weights
    assert not left, left


def train_cli(ctx, *extra, data=None, out=None, steps="1", backend="torch"):
    return run_cli("train", "--backend", backend, "--model", ctx.model, "--data", data or ctx.data,
                   "--output", out or ctx.out, "--steps", steps, *extra)


def train_model(ctx, model):
    """`train` on another (broken) base model, the rest as every row."""
    return run_cli("train", "--backend", "torch", "--model", model, "--data", ctx.data, "--output", ctx.out)


def train_config(ctx, cfg):
    """`train --config cfg` with the row's model, data and output."""
    return run_cli("train", "--config", cfg, "--model", ctx.model, "--data", ctx.data, "--output", ctx.out)


def model_copy(ctx) -> Path:
    """A copy of the tiny model for a row to break."""
    d = ctx.tmp / "model"
    shutil.copytree(ctx.model, d)
    return d


def bad_data(ctx, text: str | bytes, where: str, *needles, name: str = "bad.jsonl") -> str:
    """`train` on a data file holding `text`, refused with the file named as f"{file}{where}"
    (where = ":2:" for a line, "" for the whole file) and every needle; nothing written."""
    data = ctx.tmp / name
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_bytes(text if isinstance(text, bytes) else text.encode())
    return refused(ctx, train_cli(ctx, data=data), f"{data}{where}", *needles)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def generate_cli(ctx, adapter, model=None):
    return run_cli("generate", "--backend", "torch", "--model", model or ctx.model, "--adapter", adapter,
                   "--prompt", "hi", "--max-new-tokens", "2")


def _nth_call_patch(ctx, n: int, action):
    """Patch the torch backend's accumulate so that its n-th call runs `action(orig, self, batch)`."""
    from backends.torch.backend import Backend
    orig, calls = Backend.accumulate, {"n": 0}

    def fake(self, batch, sync=True):
        calls["n"] += 1
        if calls["n"] == n:
            return action(orig, self, batch)
        return orig(self, batch, sync)
    ctx.mp.setattr(Backend, "accumulate", fake)


def _fail_replace_for(ctx, name: str):
    """os.replace raises ENOSPC when it would create `name` (a full disk at that very write)."""
    real = os.replace

    def fake(src, dst, *a, **k):
        if Path(dst).name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)
    ctx.mp.setattr(os, "replace", fake)
    return real
