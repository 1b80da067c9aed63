"""File helpers: atomic writes (temporary name, then rename), JSONL reading with line numbers,
content hashes. Every artifact twinlora writes goes through here, so nothing is half-written."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from common.errors import DataError, UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def real_path(path: str | os.PathLike, where: str | None = None) -> Path:
    """Where a write to `path` lands. A path whose last component is a symbolic link (or a chain of
    them) stands for its target: an output is replaced there and the link kept, never the link
    replaced and the run it pointed at orphaned. Other paths are returned as given. A loop is one
    UserError (`where`: the flag and path the user gave)."""
    p = Path(path)
    if not p.is_symlink():
        return p
    hop = p
    for _ in range(40):  # the kernel's own limit (MAXSYMLINKS)
        if not hop.is_symlink():
            return Path(os.path.realpath(p))
        target = Path(os.readlink(hop))
        hop = target if target.is_absolute() else hop.parent / target
    raise UserError("the output is a symbolic link that loops (it never reaches a file or directory)",
                    where=where or str(path), fix="remove or repoint the link, or choose another output path")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A full disk or an interrupt leaves the old file (or none), never a truncated one. A symlinked
    `path` is written at its target (`real_path`).
    """
    path = real_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full_error(path) from exc
        raise


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC, also when a library (safetensors' Rust writer) wraps it in its own exception type."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    text = str(exc)
    return getattr(exc, "disk_full", False) or "No space left on device" in text or "StorageFull" in text


def disk_full_error(path: str | os.PathLike) -> UserError:
    err = UserError("no space left on the device while writing (nothing half-written was kept)",
                    where=str(path), fix="free disk space or choose another --output directory, then run again")
    err.disk_full = True
    return err


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as JSONL atomically; return the number of rows."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _check_encodable(obj: Any, where: str) -> None:
    """A JSON escape can spell a lone surrogate (\\ud800), which no UTF-8 text holds: it would fail
    later, in the tokenizer or when a file is written."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise DataError("a string holds a lone surrogate escape (e.g. \\ud800), which is not text",
                        where=where, fix="remove the escape or write the full character") from None


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found", where=str(path), fix="check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
                        where=f"{path}:{exc.lineno}", fix="repair the JSON syntax") from exc
    except UnicodeDecodeError as exc:
        raise DataError("not UTF-8 text", where=str(path), fix="save the file as UTF-8") from exc
    except RecursionError:
        raise DataError("JSON nested too deeply", where=str(path), fix="flatten the document") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise DataError(f"a value cannot be read ({exc})", where=str(path), fix="write the number as text or shorten it") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed object) for each non-blank line; a bad line names file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError("data file not found", where=str(path), fix="check the path in the config or flag")
    with open(path, encoding="utf-8") as fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"malformed JSON ({exc.msg}, column {exc.colno})",
                                    where=f"{path}:{lineno}",
                                    fix="make each line one complete JSON object") from exc
                except RecursionError:
                    raise DataError("JSON nested too deeply", where=f"{path}:{lineno}",
                                    fix="make each line one flat record") from None
                except ValueError as exc:  # e.g. an integer of more than 4300 digits
                    raise DataError(f"a value cannot be read ({exc})", where=f"{path}:{lineno}",
                                    fix="write the number as text or shorten it") from None
                if "\\u" in line:
                    _check_encodable(obj, f"{path}:{lineno}")
                yield lineno, obj
        except UnicodeDecodeError as exc:
            raise DataError("not UTF-8 text", where=str(path), fix="save the file as UTF-8") from exc


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written temporary directory into place (old one removed only after); a
    symlinked `final_dir` is replaced at its target (`real_path`), the link kept."""
    final_dir = real_path(final_dir)
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        try:
            os.replace(tmp_dir, final_dir)
        except BaseException:
            os.replace(old, final_dir)  # put the previous version back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_dir, final_dir)


def _usual_permissions(root: Path) -> None:
    """Files 0666 and directories 0777 minus the umask, like any tool's output: libraries that
    write through their own temporary files (safetensors) leave 0600, which a server running as
    another user cannot read."""
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o777 & ~_UMASK)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o666 & ~_UMASK)


@contextlib.contextmanager
def atomic_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `final_dir` (beside its target when it is a symbolic
    link); it becomes `final_dir` only on success."""
    final_dir = real_path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; the output gets the usual permissions
    try:
        yield tmp
        _usual_permissions(tmp)
        replace_dir(tmp, final_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise disk_full_error(final_dir) from exc
        raise


def relative_to(path: str | os.PathLike, start: str | os.PathLike) -> str | None:
    """`path` relative to the directory `start` (POSIX separators), so a record stays valid when
    the whole tree is moved or shared; None where the two share no directory but the root (a
    model cache beside a project: an absolute path says it better) or another drive."""
    try:
        p, s = Path(path).resolve(), Path(start).resolve()
        if Path(os.path.commonpath([p, s])) == Path(p.anchor):
            return None
        return Path(os.path.relpath(p, s)).as_posix()
    except ValueError:
        return None
