"""The OpenAI-compatible HTTP API of `serve` (FastAPI): the routes and field names vLLM and
mlx-lm's server expose, OpenAI-style JSON errors with the right status, server-sent events for
streaming. Answers come from jobs/answering.py, the code `generate` runs."""
from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import sys
import time
import traceback
import uuid
from typing import Literal, Optional, Union

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from jobs.answering import Target, generate_ids
from jobs.serve_errors import busy, error, failure
from jobs.serving import Busy, Engine, Served
from jobs.session import fit_context, prompt_ids

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any prompt the context holds


class Sampled(BaseModel):
    """Fields both endpoints share (OpenAI's names; unknown fields are ignored, as OpenAI does)."""
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: Optional[int] = Field(None, ge=0, le=2 ** 32 - 1)
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class Part(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[Part]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Sampled):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)


class CompletionRequest(Sampled):
    prompt: Union[str, list[str]]
    logprobs: Optional[int] = Field(None, ge=0, le=20)


async def client_left(request: Request) -> None:
    """Returns when the client closes the connection (the body is already read, so the next
    message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_left(request: Request, engine: Engine, ticket, waiting):
    """`waiting`'s result, or None when the client leaves first: its job is then stopped (dropped
    from the queue when it has not begun, so it costs no generation)."""
    watch, wait = asyncio.ensure_future(client_left(request)), asyncio.ensure_future(waiting)
    done, _ = await asyncio.wait({watch, wait}, return_when=asyncio.FIRST_COMPLETED)
    if wait in done:
        watch.cancel()
        return wait.result()
    wait.cancel()
    engine.stop(ticket)
    return None


class BodyLimit:
    """413 for a body over `limit` bytes: by its Content-Length, or while it is read (chunked)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._too_large()(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413)
            return msg
        await self.app(scope, limited, send)

    def _too_large(self) -> JSONResponse:
        return error(413, f"the request body is over {self.limit} bytes", code="body_too_large")


def create_app(served: Served, engine: Engine, api_key: str | None = None, default_max_tokens: int = 256,
               adapter_roots: list | None = None) -> FastAPI:
    """The app: adapter routes, the body limit, OpenAI-style errors, the key check, then the routes."""
    from jobs.serve_adapters import add_adapter_routes
    app = FastAPI(title="twinlora", docs_url=None, redoc_url=None, openapi_url=None)
    add_adapter_routes(app, served, engine, adapter_roots or [])
    app.add_middleware(BodyLimit)
    add_error_handlers(app)
    add_key_check(app, api_key)
    add_routes(app, served, engine, Answers(served, engine), default_max_tokens)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every failure as one OpenAI-style JSON error with the right status."""
    @app.exception_handler(RequestValidationError)
    async def bad_fields(request, exc):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
        return error(400, f"{where}: {first.get('msg', 'invalid value')}", param=where)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        if exc.status_code == 413:
            return BodyLimit(None)._too_large()
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crashed(request, exc):  # a bug: logged here in full, one line to the client
        traceback.print_exception(exc, file=sys.stderr)
        return error(500, f"internal error ({type(exc).__name__}); the server log has the details")


def add_key_check(app: FastAPI, api_key: str | None) -> None:
    """With a key, every /v1/ request must send it as a bearer token (compared in constant time)."""
    @app.middleware("http")
    async def key_check(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                             code="invalid_api_key")
        return await call_next(request)


def add_routes(app: FastAPI, served: Served, engine: Engine, answers: "Answers", default_max_tokens: int) -> None:
    """/health, /v1/models, the page, and the two answering endpoints."""
    created = int(time.time())

    @app.get("/health")
    async def health():
        return engine.health()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": served.listing(created)}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        from jobs.serve_page import PAGE
        return PAGE

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        if req.messages[-1].role != "user":
            return error(400, "messages: the last message must be the user's turn to answer", param="messages")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        max_tokens = req.max_completion_tokens or req.max_tokens or default_max_tokens
        top = (req.top_logprobs or 0) if req.logprobs else None
        return await answers.run(req, request, lambda t: prompt_ids(served.opened, messages, t.template, t.system),
                                 max_tokens, top, "chat.completion", answers.chat_choice, "messages")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1 or not prompts[0]:
            return error(400, "prompt: give one non-empty prompt per request", param="prompt")
        msg = [{"role": "user", "content": prompts[0]}]
        return await answers.run(req, request, lambda t: prompt_ids(served.opened, msg, "raw"),
                                 req.max_tokens or default_max_tokens, req.logprobs, "text_completion",
                                 answers.text_choice, "prompt")


class Answers:
    """How one request is answered: queued on the engine, then whole or streamed, in OpenAI's shapes
    (the tokenizer that spells logprob tokens is the one opened when the app was made)."""

    def __init__(self, served: Served, engine: Engine):
        self.served, self.engine = served, engine
        self.tok = served.opened.tokenizer

    async def run(self, req, request, encode, max_tokens: int, top: int | None, kind: str, choice, field: str):
        served, engine = self.served, self.engine
        target = served.target(req.model)
        if target is None:
            return error(404, f"the model {req.model!r} does not exist; available: {', '.join(served.targets)}",
                         param="model", code="model_not_found")
        from common.training.sampling import Sampling
        sampling = Sampling(req.temperature, req.top_p, secrets.randbelow(2 ** 32) if req.seed is None else req.seed)
        opened, stops = served.opened, req.stops()

        def job(emit, cancelled):
            ids = encode(target)
            budget = fit_context(opened, len(ids), max_tokens, field, "send a shorter prompt", note=lambda m: None)
            emit(("ready", None))
            return generate_ids(opened, target, ids, budget, sampling, lambda piece: emit(("text", piece)),
                                stops, top, cancelled)
        try:
            queue, ticket = engine.submit(job)
        except Busy:
            return busy(engine)
        first = await unless_left(request, engine, ticket, queue.get())
        if first is None:  # the client left while its request waited: nobody to answer
            return error(499, "the client closed the connection", code="client_closed")
        kind_, value = first
        if kind_ == "error":
            return failure(value)
        rid = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex
        head = {"id": rid, "created": int(time.time()), "model": req.model}
        if req.stream:
            from sse_starlette.sse import EventSourceResponse
            return EventSourceResponse(self.events(queue, ticket, head, kind, choice, top is not None))
        last = await unless_left(request, engine, ticket, self.final(queue))
        if last is None:
            return error(499, "the client closed the connection", code="client_closed")
        kind_, value = last
        if kind_ == "error":
            return failure(value)
        return {**head, "object": kind, "choices": [choice(value, True, top is not None)], "usage": self.usage(value)}

    @staticmethod
    async def final(queue):
        """The job's last message: ("done", answer) or ("error", exc)."""
        while True:
            kind_, value = await queue.get()
            if kind_ in ("done", "error"):
                return kind_, value

    async def events(self, queue, ticket, head, kind, choice, with_logprobs):
        done = False
        chunk = {**head, "object": kind + ".chunk" if kind == "chat.completion" else kind}
        try:
            if kind == "chat.completion":
                yield json.dumps({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                        "logprobs": None, "finish_reason": None}]})
            while True:
                kind_, value = await queue.get()
                if kind_ == "text":
                    yield json.dumps({**chunk, "choices": [choice(value, False, False)]})
                elif kind_ == "error":
                    done = True
                    yield json.dumps(json.loads(failure(value).body))
                    break
                elif kind_ == "done":
                    done = True
                    last = choice(value, False, with_logprobs, final=True)
                    yield json.dumps({**chunk, "choices": [last], "usage": self.usage(value)})
                    break
            yield "[DONE]"
        finally:
            if not done:
                self.engine.stop(ticket)  # the client left: the worker stops at its next token and frees the slot

    @staticmethod
    def usage(a) -> dict:
        return {"prompt_tokens": a.prompt_tokens, "completion_tokens": len(a.tokens),
                "total_tokens": a.prompt_tokens + len(a.tokens)}

    def piece(self, token_id: int) -> str:
        return self.tok.decode([token_id])

    def chat_choice(self, a, whole: bool, with_logprobs: bool, final: bool = False) -> dict:
        """A chat choice: the whole message, a streamed delta (a is text), or the last chunk."""
        if not whole and not final:
            return {"index": 0, "delta": {"content": a}, "logprobs": None, "finish_reason": None}
        lp = None
        if with_logprobs:
            piece = self.piece
            lp = {"content": [{"token": piece(s["id"]), "logprob": s["logprob"], "bytes": list(piece(s["id"]).encode()),
                               "top_logprobs": [{"token": piece(i), "logprob": v, "bytes": list(piece(i).encode())}
                                                for i, v in s["top"]]} for s in a.logprobs]}
        body = {"message": {"role": "assistant", "content": a.text}} if whole else {"delta": {}}
        return {"index": 0, **body, "logprobs": lp, "finish_reason": self.finish(a)}

    def text_choice(self, a, whole: bool, with_logprobs: bool, final: bool = False) -> dict:
        if not whole and not final:
            return {"index": 0, "text": a, "logprobs": None, "finish_reason": None}
        lp = None
        if with_logprobs:
            tokens = [self.piece(s["id"]) for s in a.logprobs]
            offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
            lp = {"tokens": tokens, "token_logprobs": [s["logprob"] for s in a.logprobs],
                  "top_logprobs": [{self.piece(i): v for i, v in s["top"]} for s in a.logprobs],
                  "text_offset": offsets}
        return {"index": 0, "text": a.text if whole else "", "logprobs": lp, "finish_reason": self.finish(a)}

    @staticmethod
    def finish(a) -> str:
        return "length" if a.finish_reason == "length" else "stop"


def serve(served: Served, sock, api_key: str | None, queue_size: int, default_max_tokens: int, echo,
          adapter_roots: list | None = None) -> None:
    """Answer HTTP requests on `sock` until interrupted (uvicorn, one process)."""
    import uvicorn
    engine = Engine(queue_size)
    app = create_app(served, engine, api_key, default_max_tokens, adapter_roots)
    host, port = sock.getsockname()[:2]
    others = [m for m in served.targets if m != served.base_id]
    echo(f"[twinlora] serving {served.base_id}" + (f" with adapters {', '.join(others)}" if others else "")
         + f" on http://{host if ':' not in host else f'[{host}]'}:{port} (OpenAI API under /v1, page at /)")
    if adapter_roots:
        echo(f"[twinlora] clients may load adapters from under: {', '.join(map(str, adapter_roots))} "
             "(POST /v1/load_lora_adapter, /v1/unload_lora_adapter)")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2))
    server.run(sockets=[sock])
