"""docs/errors.md rows about `serve` (E190-E199): startup mistakes are one line and exit 2 before
anything listens; `--engine vllm` lists every reason vLLM would refuse the adapters at once."""
from __future__ import annotations

import json
import socket

from error_rows import expect_error, row
from helpers import run_cli


@row("E190")
def serve_adapter_that_is_not_one(ctx):
    r = run_cli("serve", "--model", ctx.model, "--port", "0", "--adapter", f"legal={ctx.model}")
    return expect_error(r, str(ctx.model), "no adapter here")


@row("E191")
def serve_port_in_use(ctx):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        r = run_cli("serve", "--model", ctx.model, "--port", port)
    line = expect_error(r, "--port", f"cannot listen on 127.0.0.1:{port}")
    assert "[twinlora] serving" not in r.output  # refused before the model loads
    return line


@row("E192")
def serve_model_id_twice(ctx):
    a = ctx.adapter_copy()
    r = run_cli("serve", "--model", ctx.model, "--port", "0", "--adapter", f"x={a}", "--adapter", f"x={a}")
    expect_error(run_cli("serve", "--model", "embedded", "--port", "0", "--adapter", f"embedded={a}"),
                 "is given twice (it is the base's id)")
    expect_error(run_cli("serve", "--model", ctx.model, "--port", "0", "--adapter", f".x={a}"), "is not a plain model id")
    return expect_error(r, "the model id 'x' is given twice")


@row("E193")
def vllm_cannot_serve(ctx):
    a = ctx.adapter_copy()
    cfg = json.loads((a / "adapter_config.json").read_text())
    cfg.update(r=32, use_dora=True)
    (a / "adapter_config.json").write_text(json.dumps(cfg))
    r = run_cli("serve", "--engine", "vllm", "--print-command", "--model", ctx.model, "--adapter", f"big={a}")
    return expect_error(r, "big: rank 32 > --max-lora-rank 16", "big: DoRA (use_dora)")


@row("E194")
def vllm_not_installed(ctx):
    ctx.mp.setenv("PATH", str(ctx.tmp))  # no `vllm` on it
    r = run_cli("serve", "--engine", "vllm", "--model", ctx.model, "--adapter", f"a={ctx.adapter_copy()}")
    return expect_error(r, "vLLM is not installed")


@row("E195")
def serve_adapter_root_missing(ctx):
    r = run_cli("serve", "--model", ctx.model, "--port", "0", "--allow-adapter-root", ctx.tmp / "nope")
    line = expect_error(r, f"--allow-adapter-root {ctx.tmp / 'nope'}", "not a directory")
    assert "[twinlora] serving" not in r.output  # refused before the model loads
    return line


@row("E196")
def vllm_with_adapter_roots(ctx):
    r = run_cli("serve", "--engine", "vllm", "--print-command", "--model", ctx.model, "--allow-adapter-root", ctx.tmp,
                "--adapter", f"a={ctx.adapter_copy()}")
    line = expect_error(r, "--allow-adapter-root", "VLLM_ALLOW_RUNTIME_LORA_UPDATING")
    assert "vllm serve" not in r.output  # no command printed that would drop the roots
    return line
