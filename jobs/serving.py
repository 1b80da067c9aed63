"""What `serve` holds: one base loaded once with its named adapters (`Served`), and the one worker
that answers requests in turn (`Engine`): the backends keep one active adapter and are not
thread-safe, so requests queue (bounded: a full queue is refused) instead of running at once."""
from __future__ import annotations

import asyncio
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError
from jobs.answering import Target
from jobs.session import Opened

NAME = re.compile(r"[A-Za-z0-9][\w.-]*")
PROMPT_CACHE_ENTRIES = 10  # prompts whose keys and values are kept for reuse (mlx_lm.server's default)


@dataclass
class Served:
    opened: Opened
    base_id: str
    targets: dict[str, Target]                            # model id → what answers it
    roots: dict[str, str] = field(default_factory=dict)   # model id → its directory

    def target(self, model_id: str) -> Target | None:
        return self.targets.get(model_id)

    def listing(self, created: int) -> list[dict]:
        """/v1/models rows, as vLLM writes them: adapters name the base as `parent`."""
        return [{"id": mid, "object": "model", "created": created, "owned_by": "twinlora", "root": self.roots[mid],
                 "parent": None if t.key is None else self.base_id, "max_model_len": self.opened.context}
                for mid, t in self.targets.items()]


def check_names(adapters: list[tuple[str, str]], base_id: str) -> None:
    """Adapter names are model ids a client types: plain, unique, and not the base's."""
    seen = set()
    for name, path in adapters:
        if not NAME.fullmatch(name):
            raise UserError(f"adapter name {name!r} is not a plain model id", where=f"--adapter {name}={path}",
                            fix="use letters, digits, '.', '-' or '_', e.g. --adapter legal=runs/legal/adapter")
        if name in seen or name == base_id:
            raise UserError(f"the model id {name!r} is given twice" + (" (it is the base's id)" if name == base_id else ""),
                            where=f"--adapter {name}={path}", fix="give every adapter its own NAME=DIR")
        seen.add(name)


def load_served(backend: str, model: str | None, adapters: list[tuple[str, str]], echo) -> Served:
    """Open the base once and add every adapter over it; each adapter keeps the template and
    system prompt it was trained with (as `generate` uses them), the base answers with the
    tokenizer's chat template."""
    from jobs.session import add_adapter, base_for, open_model
    model = base_for(model, adapters[0][1] if adapters else None, echo)
    base_id = model
    check_names(adapters, base_id)
    opened = open_model(backend, model, adapter=adapters[0][1] if adapters else None)
    opened.backend.cache_prompts(PROMPT_CACHE_ENTRIES)
    targets = {base_id: Target(base_id, None)}
    roots = {base_id: str(opened.model_dir)}
    for i, (name, path) in enumerate(adapters):
        key = "default" if i == 0 else f"adapter_{i}"
        if i:
            add_adapter(opened, key, path)
        targets[name], roots[name] = adapter_target(name, key, path, opened.meta if i == 0 else None), str(path)
    return Served(opened, base_id, targets, roots)


def adapter_target(name: str, key: str, path: str | Path, meta: dict | None = None) -> Target:
    """How adapter `name` (backend key `key`) answers: the template and system prompt it records."""
    from common.adapters.format import recorded_prompting
    template, system = recorded_prompting(Path(path), meta if meta is not None else _meta(path))
    return Target(name, key, template or "chat", system)


def _meta(adapter: str | Path) -> dict:
    from common.adapters.format import META
    f = Path(adapter) / META
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}


def adapter_roots(dirs: list[str]) -> list[Path]:
    """--allow-adapter-root DIRs, resolved (symlinks followed): the only places a client may load
    adapters from at runtime. Each must be an existing directory."""
    out = []
    for d in dirs:
        if not Path(d).expanduser().is_dir():
            raise UserError("not a directory", where=f"--allow-adapter-root {d}",
                            fix="name an existing directory that holds the adapters clients may load, "
                                "e.g. --allow-adapter-root runs")
        out.append(Path(d).expanduser().resolve())
    return out


class Busy(Exception):
    """The queue is full: the request is refused (503) rather than held without bound."""


class Ticket:
    """One submitted job: whether the worker has begun it, and the flag that stops it. A client
    that leaves before its job begins frees its place at once, and the job never runs."""

    def __init__(self):
        self.lock, self.cancel = threading.Lock(), threading.Event()
        self.started = self.dropped = False

    def begin(self) -> bool:
        """On the worker: False when the job was stopped before it began (it is skipped)."""
        with self.lock:
            self.started = not self.cancel.is_set()
            return self.started

    def stop(self) -> bool:
        """Stop the job at its next token; True when it had not begun (it is dropped now)."""
        with self.lock:
            self.cancel.set()
            self.dropped = not self.started
            return self.dropped


class Engine:
    """Runs jobs one at a time on one thread; at most `queue_size` wait behind the running one.
    Counts are touched on the event loop's thread only."""

    def __init__(self, queue_size: int):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="twinlora-serve")
        self.limit, self.pending, self.running = queue_size + 1, 0, 0
        self.served_total = self.cancelled_total = self.dropped_total = 0

    def health(self) -> dict:
        return {"status": "ok", "running": self.running, "waiting": self.pending - self.running,
                "served": self.served_total, "cancelled": self.cancelled_total, "dropped": self.dropped_total}

    def submit(self, job) -> tuple[asyncio.Queue, Ticket]:
        """Queue `job(emit, cancelled)`; what it emits, then ("done", result) or ("error", exc),
        arrive on the returned queue. `stop(ticket)` asks the job to stop at its next token, or
        drops it when it has not begun."""
        if self.pending >= self.limit:
            raise Busy()
        loop, out, ticket = asyncio.get_running_loop(), asyncio.Queue(), Ticket()
        self.pending += 1

        def emit(item) -> None:
            loop.call_soon_threadsafe(out.put_nowait, item)

        def work() -> bool | None:
            if not ticket.begin():
                return None
            loop.call_soon_threadsafe(self._started)
            try:
                result = job(emit, ticket.cancel.is_set)
            except BaseException as exc:  # noqa: BLE001  (handed to the request, which answers with a status)
                emit(("error", exc))
                return False
            emit(("done", result))
            return getattr(result, "finish_reason", None) == "cancelled"

        self.pool.submit(work).add_done_callback(lambda f: loop.call_soon_threadsafe(self._finished, f.result()))
        return out, ticket

    def stop(self, ticket: Ticket) -> None:
        """The client left: a job not begun gives its place back now; a running one ends at its next token."""
        if not ticket.dropped and ticket.stop():
            self.pending -= 1
            self.dropped_total += 1

    def _started(self) -> None:
        self.running += 1

    def _finished(self, cancelled: bool | None) -> None:
        if cancelled is None:  # dropped before it began: already counted by stop()
            return
        self.pending -= 1
        self.running -= 1
        self.served_total += 1
        self.cancelled_total += cancelled


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def host_warning(host: str, api_key: str | None) -> str | None:
    """The line printed when the server listens beyond this machine with no key to ask for."""
    if host in LOCAL_HOSTS or api_key:
        return None
    return (f"warning: listening on {host} without --api-key: anyone who reaches this address can use the "
            "model (pass --api-key KEY, or keep the default --host 127.0.0.1)")


def listen(host: str, port: int):
    """The listening socket, bound before the model loads: a port in use is a one-line error at
    once, not a uvicorn log after a minute of loading."""
    import socket
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc})", where="--port",
                        fix="pick a free port (e.g. --port 8001), or stop what is listening there") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock

