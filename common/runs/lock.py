"""One writer per run directory: a lock file beside it (`.NAME.lock`, pid + host + start time).

It is taken before the model loads, so a second training (or `--resume`) into the same `--output`
is refused at once instead of interleaving config, checkpoints and log with the first. A lock
whose process is gone (same host, pid not alive, or alive but started after the lock: a reused
pid) is stale and taken over; a lock from another host cannot be checked and is reported with the
way to remove it.

`OutputLock` is the same lock for a whole command's output (study, sweep, eval, prepare, merge,
export-gguf): one twinlora process writes one output at a time, and the refusal names the output,
not the lock file.
"""
from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from common.errors import TrainingError

STALE_UNREADABLE_S = 10.0  # a lock file with no readable content for this long: its writer died


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _process_start(pid: int) -> float | None:
    """When process `pid` started (epoch seconds, ~1 s precision) on Linux; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime"))
        return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _who(holder: dict | None) -> str:
    if not holder:
        return "a process that is starting"
    began = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {began}"


class RunLock:
    """`with RunLock(run_dir):` holds the lock of `run_dir` for the block."""

    def __init__(self, run_dir: str | os.PathLike):
        from common.runs.io import real_path
        run_dir = real_path(run_dir).absolute()  # a symlinked output is locked where it is: one lock for both names
        self.run_dir = run_dir
        self.file = run_dir.parent / f".{run_dir.name}.lock"
        self.record = {"pid": os.getpid(), "host": socket.gethostname(), "started": round(time.time(), 3)}
        self._made: list[Path] = []

    def _holder(self) -> dict | None:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def _stale(self, holder: dict | None) -> bool:
        if holder is None:
            try:
                return time.time() - self.file.stat().st_mtime > STALE_UNREADABLE_S
            except FileNotFoundError:
                return True
        if holder.get("host") != self.record["host"]:
            return False
        pid = holder.get("pid")
        if not (isinstance(pid, int) and _alive(pid)):
            return True
        began = _process_start(pid)  # a live pid that started after the lock was taken: reused, stale
        return began is not None and began > float(holder.get("started", 0)) + 2.0

    def refusal(self, holder: dict | None) -> TrainingError:
        return TrainingError(f"another training is using this run directory ({_who(holder)})",
                             where=str(self.run_dir), fix="wait for it to finish or choose another --output; "
                             f"if that process is gone, delete {self.file}")

    def acquire(self) -> "RunLock":
        parent = self.file.parent
        missing = [p for p in [parent, *parent.parents] if not p.exists()]
        parent.mkdir(parents=True, exist_ok=True)
        self._made = missing  # removed again on release when still empty
        for _ in range(3):
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = self._holder()
                if self._stale(holder):
                    self.file.unlink(missing_ok=True)  # the process that held it is gone
                    continue
                raise self.refusal(holder) from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(self.record))
            return self
        raise TrainingError("could not take the run directory's lock", where=str(self.file),
                            fix=f"delete {self.file} if no training is running")

    def release(self) -> None:
        if self._holder() == self.record:
            self.file.unlink(missing_ok=True)
        for p in self._made:
            try:
                p.rmdir()  # only if still empty: the run failed before writing anything
            except OSError:
                break

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class OutputLock(RunLock):
    """`with OutputLock(path, flag):` one twinlora command at a time writes `path` (a directory, or
    the file of export-gguf). Checks the path first (`check_path_writable`), so a bad output gets
    its usual one line, not an error about the lock."""

    def __init__(self, path: str | os.PathLike, flag: str = "--output"):
        from common.runs.ownership import check_path_writable
        check_path_writable(path, flag)
        super().__init__(os.path.normpath(Path(path).absolute()))
        self.flag = flag

    def refusal(self, holder: dict | None) -> TrainingError:
        fix = f"wait for it to finish, or choose another {self.flag}"
        if holder and holder.get("host") != self.record["host"]:  # cannot be checked from here
            fix += f"; if that process is gone, delete {self.file}"
        return TrainingError(f"another twinlora process is writing this output ({_who(holder)})", where=str(self.run_dir),
                             fix=fix)


@contextmanager
def claim_output(path: str | os.PathLike, kind: str, flag: str = "--output", inputs=()):
    """An output directory taken in one call (bench, sweep): it may receive a `kind` output
    (common.runs.ownership.check_output_dir: not the user's, not an input, writable), then no other
    twinlora process writes it while the block runs (OutputLock). Yields whether it exists and is ours."""
    from common.runs.ownership import check_output_dir
    exists = check_output_dir(path, kind, flag, inputs)
    with OutputLock(path, flag):
        yield exists
