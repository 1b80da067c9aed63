"""What twinlora may replace: only what it wrote and can recognise, and never an input.

A run directory carries a marker file (`twinlora_run.json`); the other outputs are recognised by
the files twinlora always writes there (a merged model's `twinlora_merge.json`, an eval's
`metrics.json` + `predictions.jsonl`, ...). An output path that exists and is not ours is never
replaced or written into: the user gets one line suggesting a new name. An output that is (or
holds) one of the command's inputs is refused. All of this is checked before any long work starts,
together with what would otherwise fail only at write time (a parent that is a file, a read-only
directory, a name the filesystem cannot hold).
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Callable, Iterable

from common.errors import UserError

RUN_MARKER = "twinlora_run.json"
BENCH_MARKER = "work/twinlora_bench.json"  # written when a bench starts: an interrupted one is ours to rerun


def _has(*names: str) -> Callable[[Path], bool]:
    return lambda p: all((p / n).is_file() for n in names)


def _mlx_adapter(p: Path) -> bool:
    try:
        return "twinlora" in json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def is_run_dir(path: Path) -> bool:
    """Our marker, or a run written before the marker existed (config.yaml + a log that starts
    with our "start" event)."""
    path = Path(path)
    if (path / RUN_MARKER).is_file():
        return True
    log = path / "log.jsonl"
    if not ((path / "config.yaml").is_file() and log.is_file()):
        return False
    try:
        with open(log, encoding="utf-8") as fh:
            first = json.loads(fh.readline())
        return isinstance(first, dict) and first.get("event") == "start"
    except (OSError, ValueError):
        return False


# kind → (what the user reads, how we recognise one of ours)
KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "run": ("a twinlora run directory", is_run_dir),
    "merged": ("a model merged by twinlora", _has("twinlora_merge.json")),
    "adapter": ("an adapter written by twinlora", lambda p: (p / "twinlora.json").is_file() or _mlx_adapter(p)),
    "eval": ("a twinlora eval directory", _has("metrics.json", "predictions.jsonl")),
    "compare": ("a twinlora compare directory", _has("compare.md")),
    "prepared": ("a directory prepared by twinlora", _has("manifest.json")),
    "sweep": ("a twinlora sweep directory", _has("sweep.json")),
    "study": ("a twinlora study directory", _has("settings.json")),
    "bench": ("a twinlora bench directory", lambda p: any((p / n).is_file() for n in ("bench.json", "longseq.json",
                                                                                     BENCH_MARKER))),
    "demo": ("a twinlora demo directory", lambda p: (p / "summary.json").is_file() or (p / "data" / "manifest.json").is_file()
             or is_run_dir(p / "mlx") or is_run_dir(p / "torch")),
}


def mark_run(path: Path) -> None:
    """Write the run marker (what makes a directory ours to resume, overwrite or lock)."""
    from common.runs.io import write_json
    write_json(Path(path) / RUN_MARKER, {"kind": "twinlora run", "format": 1})


def _same_or_inside(inner: Path, outer: Path) -> bool:
    try:
        inner, outer = inner.resolve(), outer.resolve()
    except (OSError, RuntimeError):
        return False
    return inner == outer or outer in inner.parents


def check_path_writable(path: str | Path, flag: str) -> None:
    """The path can be created where it is: text the filesystem can hold, every existing ancestor
    a writable directory; a symbolic link stands for its target, which must exist (a loop or a
    dangling link is refused). Raises one UserError naming `flag`."""
    from common.runs.io import real_path
    text = str(path)
    if not text.strip():
        raise UserError("the output path is empty", where=flag, fix="give a directory name, e.g. runs/my-run")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"the output path {text.encode('utf-8', 'surrogateescape')!r} is not valid UTF-8 text",
                        where=flag, fix="use a name made of UTF-8 characters") from None
    for part in Path(text).parts:
        if len(part.encode("utf-8")) > 255:
            raise UserError(f"a path component is {len(part.encode('utf-8'))} bytes long; filesystems allow 255",
                            where=flag, fix="use a shorter name")
    p = Path(text)
    if p.is_symlink():  # the output is where the link points (common.runs.io.real_path)
        target = real_path(p, where=f"{flag} {text}")
        if not target.exists():
            raise UserError(f"the output is a symbolic link to {target}, which does not exist", where=f"{flag} {text}",
                            fix=f"create {target} first, or choose another output path")
        p = target
    p = p.absolute()
    for anc in [p, *p.parents]:
        if anc.exists() or anc.is_symlink():
            if anc != p and not anc.is_dir():
                raise UserError(f"{anc} is a file, so nothing can be created under it", where=f"{flag} {text}",
                                fix="choose an output path whose parent is a directory")
            parent = anc if anc != p else anc.parent
            if anc == p and p.is_dir() and not os.access(p, os.W_OK | os.X_OK):
                parent = p  # an existing output directory is written into (a run) or renamed (needs its ..)
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"cannot write in {parent} (read-only or no permission)", where=f"{flag} {text}",
                                fix="choose an output path in a writable directory")
            return


def _refuse_inputs(path: Path, flag: str, inputs: Iterable, what: str) -> None:
    """An output never lands on (or around) one of the command's inputs."""
    for inp in inputs:
        if inp and Path(inp).exists() and _same_or_inside(Path(inp), path):
            raise UserError(f"the output would replace the input {inp}", where=f"{flag} {path}",
                            fix=f"write to a new {what}; an input is never overwritten")


def check_output_dir(path: str | os.PathLike, kind: str, flag: str, inputs: Iterable = ()) -> bool:
    """Before the work: may `path` receive a `kind` output? Returns whether it exists and is ours
    (it will be replaced when the new one is complete); raises a UserError otherwise."""
    check_path_writable(path, flag)
    path = Path(path)
    _refuse_inputs(path, flag, inputs, "directory")
    if not path.exists():
        return False
    if not path.is_dir():
        raise UserError("the output exists and is a file, not a directory", where=f"{flag} {path}",
                        fix=f"choose a new name (e.g. {path}-out); twinlora does not replace files it did not write")
    if not any(path.iterdir()):
        return False
    desc, ours = KINDS[kind]
    if not ours(path):
        raise UserError(f"the output directory exists and is not {desc}, so twinlora will not write into it",
                        where=f"{flag} {path}", fix=f"choose a new name (e.g. {path.name}-2) or move that directory away")
    return True


def is_parity_report(path: Path) -> bool:
    """parity.json as `parity --output` writes it (a JSON object with "pass" and its numbers): a
    leading "{" alone would let any JSON file of the user's be replaced."""
    try:
        rep = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(rep, dict) and "pass" in rep and ("max_abs_logit_diff" in rep or "same_weights" in rep)


def check_output_file(path: str | os.PathLike, flag: str, magic: bytes | None = None, inputs: Iterable = (),
                      ours: Callable[[Path], bool] | None = None) -> None:
    """A file output: not a directory, not an input, and an existing file is replaced only when it
    is of the same kind (starts with `magic`, or `ours` recognises it); raises a UserError otherwise."""
    check_path_writable(path, flag)
    path = Path(path)
    _refuse_inputs(path, flag, inputs, "file")
    if path.is_dir():
        raise UserError("the output is a directory, a file name is expected", where=f"{flag} {path}",
                        fix=f"give a file name, e.g. {path / 'out'}")
    if path.is_file() and (magic is not None or ours is not None):
        with open(path, "rb") as fh:
            if (magic is not None and fh.read(len(magic)) != magic) or (ours is not None and not ours(path)):
                raise UserError("the output file exists and was not written by twinlora", where=f"{flag} {path}",
                                fix="choose a new file name or move that file away")


def os_error(exc: OSError, path: str | os.PathLike) -> UserError | None:
    """An OSError a user can fix (read-only filesystem, permission, name too long, a file in the
    way) as one UserError; None for anything else (a bug keeps its traceback)."""
    messages = {errno.EROFS: "the filesystem is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.ENAMETOOLONG: "the file name is too long",
                errno.ENOTDIR: "a parent of this path is a file", errno.EISDIR: "this path is a directory"}
    if exc.errno not in messages:
        return None
    return UserError(f"cannot write here: {messages[exc.errno]}", where=str(path),
                     fix="choose another output path")
