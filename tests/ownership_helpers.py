"""Helpers of the issue-14 tests (tests/safety_rows.py, tests/test_ownership.py): a user's
directory, a byte-for-byte snapshot of a tree, waiting on a subprocess's progress."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path


def snapshot(root: Path) -> dict:
    """relative path → sha256 of every file under root (directories implied)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def user_dir(path: Path) -> Path:
    """A directory of the user's: files and a sub-folder that no twinlora command may touch."""
    (path / "sub").mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_text("mine\n")
    (path / "config.yaml").write_text("my: own file\n")
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return path


def _wait_for(pred, timeout: float = 120.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.05)
    return False
