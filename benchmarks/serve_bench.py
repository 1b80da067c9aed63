"""Serving speed: time to first token and decode tokens/s of `cli.py serve --backend mlx` against
plain `mlx_lm.server` on the same base and adapter, and against our own answering loop called
in-process (what `generate` runs); then the alternating case, each request to another adapter
(mlx_lm.server reloads the model when a request's adapter changes; ours switches layers). Both
servers keep answered prompts' KV caches, so the repeated prompt is measured, and a new prompt
each request too. The setups take turns, one request each per round.

    python benchmarks/serve_bench.py --adapter runs/legi-demo/adapter [--requests 6 --max-tokens 64]

Prints one markdown table and the ratios. Greedy, one request at a time, streaming over HTTP.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "Write a long story about a lighthouse keeper and the sea."


def start(cmd: list[str], log: Path, ready) -> tuple[subprocess.Popen, str]:
    """Start a server; `ready(log text)` returns its base URL once it listens."""
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env={**os.environ})
    end = time.time() + 300
    while time.time() < end:
        url = ready(log.read_text())
        if url:
            return proc, url
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")


def wait_http(url: str) -> None:
    import httpx
    end = time.time() + 300
    while time.time() < end:
        try:
            if httpx.get(url + "/v1/models", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} never answered")


def timed_stream(url: str, body: dict) -> tuple[float, float, int]:
    """(seconds to the first text, decode tokens/s after it, tokens) of one streamed chat answer."""
    import httpx
    body = {**body, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.0}
    t0 = time.perf_counter()
    first = last = None
    tokens = chunks = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            msg = json.loads(line[5:])
            if msg.get("usage"):
                tokens = msg["usage"]["completion_tokens"]
            for c in msg.get("choices") or []:
                if (c.get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
    tokens = tokens or chunks
    return (first - t0), (tokens - 1) / (last - first) if last and last > first else float("nan"), tokens


def in_process(model: str, adapter: str, n: int, max_tokens: int) -> list[tuple[float, float, int]]:
    """Our answering loop without HTTP (what `generate --adapter` runs)."""
    from jobs.answering import Target, answer_messages
    from jobs.evaluation import resolve_prompting
    from jobs.session import open_model
    opened = open_model("mlx", model, adapter=adapter)
    template, system, _ = resolve_prompting(opened, None, None)
    target = Target("a", "default", template, system)
    out = []
    for _ in range(n):
        stamps = []
        t0 = time.perf_counter()
        a = answer_messages(opened, target, [{"role": "user", "content": PROMPT}], max_tokens,
                            on_text=lambda piece: stamps.append(time.perf_counter()))
        n_tok = len(a.tokens)
        out.append((stamps[0] - t0, (n_tok - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan"), n_tok))
    return out


def fresh(i: int) -> list[dict]:
    """A prompt no request sent before (only the chat template's opening is shared, and cached)."""
    return [{"role": "user", "content": f"Tale number {i * 7 + 3}: {PROMPT}"}]


def interleaved(n: int, setups: dict) -> dict[str, list]:
    """Each setup's n timings, taken in turns (one request of each setup per round), so that a
    load that changes during the run weighs on every setup alike."""
    out = {k: [] for k in setups}
    for i in range(n):
        for k, one in setups.items():
            out[k].append(one(i))
    return out


def summary(rows: list[tuple[float, float, int]]) -> tuple[float, float, float]:
    return (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows),
            statistics.median(r[2] for r in rows))


def report(res: dict, model: str, adapter: str, n: int, mt: int) -> None:
    """The table of medians and the ratios, ours against mlx_lm.server and against in-process."""
    print(f"model {model}, adapter {adapter}, {n} requests of up to {mt} tokens each, greedy, streamed, medians\n")
    print("| setup | time to first token (s) | decode tokens/s | tokens |\n|---|---:|---:|---:|")
    med = {k: summary(v) for k, v in res.items()}
    for k, (ttft, tps, tok) in med.items():
        print(f"| {k} | {ttft:.3f} | {tps:.1f} | {tok:.0f} |")
    o, p = med["ours, one adapter"], med["mlx_lm.server, one adapter"]
    oa, pa = med["ours, alternating a/b/c/base"], med["mlx_lm.server, alternating 3 adapters/base"]
    g = med["our answering loop in-process (generate)"]
    of, pf = med["ours, one adapter, a new prompt each request"], med["mlx_lm.server, one adapter, a new prompt each request"]
    print(f"\nours / mlx_lm.server, one adapter: decode {o[1] / p[1]:.2f}x, time to first token {o[0] / p[0]:.2f}x")
    print(f"ours / mlx_lm.server, a new prompt each request: decode {of[1] / pf[1]:.2f}x, "
          f"time to first token {of[0] / pf[0]:.2f}x")
    print(f"ours / mlx_lm.server, alternating: decode {oa[1] / pa[1]:.2f}x, time to first token {oa[0] / pa[0]:.2f}x")
    print(f"ours over HTTP / in-process: decode {o[1] / g[1]:.2f}x, time to first token {o[0] / g[0]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="Base (default: the one the adapter records).")
    ap.add_argument("--adapter", required=True, help="A twinlora adapter directory (PEFT format).")
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    from common.adapters.convert import convert_adapter
    from common.models.resolve import resolve_model
    from jobs.session import base_for
    model = base_for(args.model, args.adapter, print)
    model_dir = str(resolve_model(model))
    work = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    mlx_dirs = []
    for i in range(3):  # three adapter directories in mlx-lm's layout for mlx_lm.server
        mlx_dirs.append(str(convert_adapter(Path(args.adapter), work / f"mlx{i}", "mlx", model)))
    ours, url = start([sys.executable, str(ROOT / "cli.py"), "serve", "--backend", "mlx", "--model", model, "--port", "0",
                       *[x for n in "abc" for x in ("--adapter", f"{n}={args.adapter}")]], work / "ours.log",
                      lambda text: (m := re.search(r"on http://[^:]+:(\d+) ", text)) and f"http://127.0.0.1:{m.group(1)}")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plain, plain_url = start([sys.executable, "-m", "mlx_lm.server", "--model", model_dir, "--adapter-path", mlx_dirs[0],
                              "--port", str(port)], work / "plain.log", lambda text: f"http://127.0.0.1:{port}")
    try:
        wait_http(url)
        wait_http(plain_url)
        msg = [{"role": "user", "content": PROMPT}]
        n, mt = args.requests, args.max_tokens
        timed_stream(url, {"model": "a", "messages": msg, "max_tokens": 4})          # warm-up
        timed_stream(plain_url, {"model": "default_model", "messages": msg, "max_tokens": 4})
        res = interleaved(n, {
            "ours, one adapter": lambda i: timed_stream(url, {"model": "a", "messages": msg, "max_tokens": mt}),
            "mlx_lm.server, one adapter": lambda i: timed_stream(plain_url, {"model": "default_model", "messages": msg,
                                                                             "max_tokens": mt}),
            "ours, one adapter, a new prompt each request": lambda i: timed_stream(
                url, {"model": "a", "messages": fresh(i), "max_tokens": mt}),
            "mlx_lm.server, one adapter, a new prompt each request": lambda i: timed_stream(
                plain_url, {"model": "default_model", "messages": fresh(i), "max_tokens": mt}),
        })
        res |= interleaved(n, {  # after the others: mlx_lm.server is left on another adapter each time
            "ours, alternating a/b/c/base": lambda i: timed_stream(url, {"model": ["a", "b", "c", model][i % 4],
                                                                         "messages": msg, "max_tokens": mt}),
            "mlx_lm.server, alternating 3 adapters/base": lambda i: timed_stream(
                plain_url, {"model": model_dir, "adapters": [*mlx_dirs, None][i % 4], "messages": msg,
                            "max_tokens": mt}),
        })
    finally:
        ours.terminate()
        plain.terminate()
    res["our answering loop in-process (generate)"] = in_process(model, args.adapter, n, mt)
    report(res, model, args.adapter, n, mt)


if __name__ == "__main__":
    main()
