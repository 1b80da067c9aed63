"""Adapters loaded and unloaded while `serve` runs: vLLM's POST /v1/load_lora_adapter and
/v1/unload_lora_adapter, with its fields (`lora_name`, `lora_path`), statuses and messages. Off
unless the operator named the directories clients may load from (--allow-adapter-root, as vLLM
needs VLLM_ALLOW_RUNTIME_LORA_UPDATING); a path outside them (symlinks resolved), an adapter for
another base, a name taken, or the base itself is refused. Loading adds LoRA layers over the one
loaded base on the worker thread (the backends are not thread-safe); the base is never reloaded."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Optional

from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict

from jobs.serve_errors import busy, error, failure
from jobs.serving import NAME, Busy, Engine, Served, adapter_target

OFF = ("loading adapters at runtime is off on this server: start `cli.py serve` with --allow-adapter-root DIR "
       "(the directories clients may load adapters from)")


class LoadLoRA(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str = ""
    lora_path: str = ""


class UnloadLoRA(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str = ""
    lora_int_id: Optional[int] = None


class Refused(Exception):
    """A load or unload the server will not do: its HTTP status and one line."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def check_load(served: Served, roots: list[Path], name: str, path: str, loading: set[str]) -> Path:
    """The adapter directory to load as `name`, resolved (symlinks followed), or Refused."""
    from common.adapters.format import detect_format
    from common.errors import AdapterError
    if not name or not path:
        raise Refused(400, "Both 'lora_name' and 'lora_path' must be provided.")
    if name == served.base_id:
        raise Refused(400, f"'{name}' is the base model's id: give the adapter another lora_name", "lora_name")
    if name in served.targets or name in loading:
        raise Refused(400, f"The lora adapter '{name}' has already been loaded.", "lora_name")
    if not NAME.fullmatch(name):
        raise Refused(400, f"lora_name {name!r} is not a plain model id: use letters, digits, '.', '-' or '_'",
                      "lora_name")
    real = Path(path).expanduser().resolve()
    if not any(real.is_relative_to(root) for root in roots):
        raise Refused(400, f"lora_path {path!r} is outside the directories this server loads adapters from "
                      f"({', '.join(map(str, roots))}): move the adapter under one, or restart with "
                      "--allow-adapter-root naming its directory", "lora_path")
    try:
        detect_format(real)
    except AdapterError as exc:
        raise Refused(404, f"No adapter found at {path!r}: {exc}", "lora_path") from None
    return real


def load_onto(served: Served, key: str, name: str, real: Path):
    """On the worker: add the adapter's layers over the loaded base (its base checked first)."""
    from jobs.session import add_adapter
    add_adapter(served.opened, key, real)
    return adapter_target(name, key, real)


async def on_worker(engine: Engine, work):
    """Run `work()` on the serving thread, in turn with the requests: its result, or a JSONResponse."""
    try:
        queue, _ = engine.submit(lambda emit, cancelled: work())
    except Busy:
        return busy(engine)
    while True:
        kind, value = await queue.get()
        if kind == "error":
            return failure(value)
        if kind == "done":
            return value


def add_adapter_routes(app, served: Served, engine: Engine, roots: list[Path]) -> None:
    loading: set[str] = set()
    keys = itertools.count(1)

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(req: LoadLoRA):
        if not roots:
            return error(404, OFF, code="runtime_lora_off")
        try:
            real = check_load(served, roots, req.lora_name, req.lora_path, loading)
        except Refused as r:
            return error(r.status, r.message, param=r.param)
        name, key = req.lora_name, f"runtime_{next(keys)}"
        loading.add(name)
        try:
            target = await on_worker(engine, lambda: load_onto(served, key, name, real))
        finally:
            loading.discard(name)
        if isinstance(target, JSONResponse):
            return target
        served.targets[name], served.roots[name] = target, str(real)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(req: UnloadLoRA):
        if not roots:
            return error(404, OFF, code="runtime_lora_off")
        name, target = req.lora_name, served.targets.get(req.lora_name)
        if not name:
            return error(400, "'lora_name' must be provided.", param="lora_name")
        if name == served.base_id:
            return error(400, f"'{name}' is the base model: it cannot be unloaded", param="lora_name")
        if target is None:
            return error(404, f"The lora adapter '{name}' cannot be found.", param="lora_name")
        root = served.roots.pop(name)
        del served.targets[name]  # new requests for it get 404; those queued before still run
        done = await on_worker(engine, lambda: served.opened.backend.remove_adapter(target.key))
        if isinstance(done, JSONResponse):
            served.targets[name], served.roots[name] = target, root
            return done
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")
