"""`cli.py serve` over real HTTP with the official `openai` client: two servers in subprocesses
(torch with three adapters behind an API key; MLX with one adapter, a queue of one, on 0.0.0.0;
both allow loading adapters at runtime from one root), the same text as `generate`, every error
status, adapters loaded and unloaded at runtime, clients that leave mid-stream or while queued,
20 concurrent clients, and logprobs parity between the two backends."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT
from helpers import chat_rows, run_cli, tiny_config, write_jsonl

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

KEY = "sk-test-key"
Q = "Que dit l'article L101-1 ?"


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """Three tiny adapters: `a` plain, `b` trained with a system prompt (recorded, so it answers
    with it), `c` at another rank and learning rate."""
    from jobs.trainer import train
    root = tmp_path_factory.mktemp("serve")
    data = write_jsonl(root / "train.jsonl", chat_rows(12))
    settings = {"a": {}, "b": {"data": {"system_prompt": "Réponds en une phrase."}},
                "c": {"lora": {"rank": 4}, "training": {"lr": 3e-2, "seed": 7}}}
    for name, over in settings.items():
        sections = {"training": {"steps": 3, **over.get("training", {})}, **{k: v for k, v in over.items() if k != "training"}}
        train(tiny_config(tiny_model, data, root / name, **sections), "torch", echo=lambda *a, **k: None)
    return {name: root / name / "adapter" for name in settings}


class Server:
    """A `cli.py serve` subprocess on a free port (--port 0; the port is read from its first line)."""

    def __init__(self, args: list, log: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.out, self.err = log.with_suffix(".out"), log.with_suffix(".err")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", "--port", "0", *map(str, args)],
                                     stdout=open(self.out, "w"), stderr=open(self.err, "w"), env=env)
        self.url = None

    def wait(self, timeout: float = 180) -> "Server":
        end = time.time() + timeout
        while time.time() < end:
            m = re.search(r"on http://[^:]+:(\d+) ", self.out.read_text())
            if m:
                self.url = f"http://127.0.0.1:{m.group(1)}"
                return self
            assert self.proc.poll() is None, self.err.read_text()
            time.sleep(0.2)
        raise AssertionError(f"server did not start: {self.err.read_text()}")

    def client(self, key: str = KEY):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def health(self) -> dict:
        return httpx.get(self.url + "/health").json()

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.err.read_text()


@pytest.fixture(scope="module")
def servers(tiny_model, adapters, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_logs")
    root = adapters["a"].parents[1]  # the folder that holds the three runs: clients may load from it
    torch_srv = Server(["--backend", "torch", "--model", tiny_model, "--api-key", KEY, "--queue-size", "32",
                        "--allow-adapter-root", root,
                        *[x for n, d in adapters.items() for x in ("--adapter", f"{n}={d}")]], log / "torch")
    mlx_srv = Server(["--backend", "mlx", "--model", tiny_model, "--host", "0.0.0.0", "--queue-size", "1",
                      "--allow-adapter-root", root, "--adapter", f"a={adapters['a']}"], log / "mlx")
    try:
        yield {"torch": torch_srv.wait(), "mlx": mlx_srv.wait()}
    finally:
        torch_srv.stop()
        mlx_srv.stop()


def chat(srv, model, content=Q, **kw):
    return srv.client().chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


def generated(*args) -> str:
    """The answer line `cli.py generate` prints (in-process)."""
    r = run_cli("generate", "--no-stream", *args)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    return lines[[i for i, line in enumerate(lines) if line.startswith(">>> ")][0] + 1]


# ---------------------------------------------------------------- what it serves

def test_models_lists_the_base_and_each_adapter_with_its_parent(servers, tiny_model, adapters):
    rows = {m.id: m for m in servers["torch"].client().models.list().data}
    assert list(rows) == [str(tiny_model), "a", "b", "c"]
    assert rows[str(tiny_model)].parent is None and rows["b"].parent == str(tiny_model)
    assert rows["c"].root == str(adapters["c"]) and rows["a"].max_model_len == 512
    page = httpx.get(servers["torch"].url + "/")  # the comparison page: no key to load it, its calls send one
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert all(s in page.text for s in ('id="prompt"', 'fetch("/v1/models"', 'fetch("/v1/chat/completions"', "Bearer "))


def test_each_model_answers_as_generate_does(servers, tiny_model, adapters):
    """Greedy and seeded-sampled: the base, a plain adapter and one with its recorded system prompt
    give over HTTP the text `generate` prints, and picking a model never reloads the base."""
    srv = servers["torch"]
    base = str(tiny_model)
    cases = [(base, []), ("a", ["--adapter", adapters["a"]]), ("b", ["--adapter", adapters["b"]])]
    for model, flags in cases:
        want = generated("--backend", "torch", "--model", tiny_model, *flags, "-p", Q, "--max-new-tokens", "12")
        got = chat(srv, model, max_tokens=12)
        assert got.choices[0].message.content == want, model
        want = generated("--backend", "torch", "--model", tiny_model, *flags, "-p", Q, "--max-new-tokens", "12",
                         "-t", "0.8", "--seed", "3")
        assert chat(srv, model, max_tokens=12, temperature=0.8, seed=3).choices[0].message.content == want, model
    texts = {m: chat(srv, m, max_tokens=12).choices[0].message.content for m in (base, "a", "b", "c")}
    # b answers with the system prompt it was trained with: the same as sending it, not as another one
    ask = lambda system: srv.client().chat.completions.create(  # noqa: E731
        model="b", max_tokens=12, messages=[{"role": "system", "content": system}, {"role": "user", "content": Q}])
    assert ask("Réponds en une phrase.").choices[0].message.content == texts["b"] != ask("Sois bref.").choices[0].message.content
    assert len(set(texts.values())) == 4  # four different models answered
    # completions: the raw prompt, continued as `generate --template raw` does
    want = generated("--backend", "torch", "--model", tiny_model, "--adapter", adapters["c"], "--template", "raw",
                     "-p", "Le salarié a droit", "--max-new-tokens", "10")
    got = srv.client().completions.create(model="c", prompt="Le salarié a droit", max_tokens=10)
    assert got.choices[0].text == want and got.usage.completion_tokens == 10 and got.choices[0].finish_reason == "length"


def test_streaming_sends_the_same_text(servers):
    srv = servers["torch"]
    whole = chat(srv, "b", max_tokens=20, temperature=0.7, seed=11)
    pieces, finish = [], None
    for ev in chat(srv, "b", max_tokens=20, temperature=0.7, seed=11, stream=True):
        pieces.append(ev.choices[0].delta.content or "")
        finish = ev.choices[0].finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content and finish == whole.choices[0].finish_reason
    assert sum(1 for p in pieces if p) > 3
    c = srv.client()
    whole = c.completions.create(model="a", prompt="Toute personne", max_tokens=15)
    streamed = "".join(ev.choices[0].text for ev in c.completions.create(model="a", prompt="Toute personne",
                                                                         max_tokens=15, stream=True))
    assert streamed == whole.choices[0].text


def test_stop_strings_and_logprobs(servers):
    srv = servers["torch"]
    full = chat(srv, "a", max_tokens=16, logprobs=True, top_logprobs=3)
    text, lps = full.choices[0].message.content, full.choices[0].logprobs.content
    assert len(lps) == full.usage.completion_tokens == 16
    for step in lps:  # greedy: the chosen token is the most likely one, and the top list is sorted
        assert len(step.top_logprobs) == 3 and step.top_logprobs[0].logprob == step.logprob <= 0
        assert [t.logprob for t in step.top_logprobs] == sorted((t.logprob for t in step.top_logprobs), reverse=True)
    stop = text[len(text) // 2:][:2]
    cut = chat(srv, "a", max_tokens=16, stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)].strip()
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens < 16
    comp = srv.client().completions.create(model="a", prompt="Toute personne", max_tokens=5, logprobs=2)
    assert len(comp.choices[0].logprobs.token_logprobs) == 5 and all(len(t) == 2 for t in comp.choices[0].logprobs.top_logprobs)


# ---------------------------------------------------------------- errors

def test_every_error_is_json_with_its_status_and_the_server_stays_up(servers, tiny_model):
    srv = servers["torch"]
    with pytest.raises(openai.AuthenticationError) as e:
        srv.client("wrong").chat.completions.create(model="a", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 401 and "missing or wrong API key" in e.value.message
    r = httpx.post(srv.url + "/v1/completions", json={"model": "a", "prompt": "x"})  # no key at all
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as e:
        chat(srv, "nope")
    assert e.value.body["message"] == f"the model 'nope' does not exist; available: {tiny_model}, a, b, c"
    for bad, where in [({"temperature": 5}, "temperature"), ({"top_p": 0}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
                       ({"n": 2}, "n"), ({"top_logprobs": 50, "logprobs": True}, "top_logprobs")]:
        with pytest.raises(openai.BadRequestError) as e:
            chat(srv, "a", **bad)
        assert e.value.status_code == 400 and e.value.body["param"] == where, bad
    with pytest.raises(openai.BadRequestError) as e:
        chat(srv, "a", content="mot " * 600)
    assert "context holds 512" in e.value.body["message"] and "Traceback" not in e.value.body["message"]
    r = httpx.post(srv.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                   content=json.dumps({"model": "a", "messages": [{"role": "user", "content": "x" * (2 << 20)}]}))
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = httpx.post(srv.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}",
                                                             "content-type": "application/json"}, content=b"{not json")
    assert r.status_code == 400 and "error" in r.json()
    assert chat(srv, "a", max_tokens=3).usage.completion_tokens == 3  # still answering
    assert srv.health()["running"] == 0


def held(srv, body: dict, path: str = "/v1/chat/completions") -> socket.socket:
    """A request sent on a raw socket and left unread: a client that may leave before its answer."""
    data = json.dumps(body).encode()
    port = int(srv.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def answer_of(sock: socket.socket) -> tuple[int, dict]:
    """(status, JSON body) of the response on a held socket (read to its end)."""
    sock.settimeout(120)
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    sock.close()
    head, body = raw.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def until(srv, ok, what: str) -> dict:
    """/health once `ok(health)` holds (the server's own counters, polled; 30 s at most)."""
    end = time.time() + 30
    while time.time() < end:
        h = srv.health()
        if ok(h):
            return h
        time.sleep(0.02)
    raise AssertionError(f"{what}: {srv.health()}")


LONG = {"model": "a", "messages": [{"role": "user", "content": Q}], "max_tokens": 480}


def test_a_full_queue_is_503_and_clients_that_leave_free_their_place(servers):
    """The MLX server answers one request at a time with one waiting (--queue-size 1). A client that
    leaves while queued gives its place back at once and its request never runs (`dropped`); one
    that leaves mid-stream or mid non-streamed answer stops its generation (`cancelled`)."""
    srv = servers["mlx"]
    before = srv.health()
    with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=60, json={**LONG, "stream": True}) as long:
        lines = long.iter_lines()
        assert next(l for l in lines if l.startswith("data:"))  # the answer has started
        queued = held(srv, {**LONG, "max_tokens": 2})
        until(srv, lambda h: h["waiting"] == 1, "the second request never queued")
        busy = httpx.post(srv.url + "/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 2})
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "queue_full"
        queued.close()  # leaves while waiting: its place frees now, while the stream still runs
        h = until(srv, lambda h: h["waiting"] == 0, "the queue did not free")
        assert h["running"] == 1 and h["dropped"] == before["dropped"] + 1
        follower = held(srv, {**LONG, "max_tokens": 2})  # takes the freed place instead of a 503
        until(srv, lambda h: h["waiting"] == 1, "the freed place was not taken")
    # the streaming client left after one chunk: its generation stops and the follower is answered
    status, body = answer_of(follower)
    assert status == 200 and body["usage"]["completion_tokens"] == 2
    after = until(srv, lambda h: h["running"] == h["waiting"] == 0, "the slot was not freed")
    assert after["cancelled"] == before["cancelled"] + 1 and after["served"] == before["served"] + 2
    assert after["dropped"] == before["dropped"] + 1  # the one that left while queued never ran
    gone = held(srv, LONG)  # non-streamed, left while it runs: stopped at its next token
    until(srv, lambda h: h["running"] == 1, "the non-streamed request never started")
    gone.close()
    last = until(srv, lambda h: h["running"] == 0, "the non-streamed request was not stopped")
    assert last["cancelled"] == after["cancelled"] + 1
    ok = httpx.post(srv.url + "/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


# ---------------------------------------------------------------- the page, in a real browser

@pytest.fixture(scope="module")
def browser():
    """Headless chromium driven by selenium (scripts/setup.sh installs both). Missing, the test is
    skipped on a developer's machine; under CI=true it fails."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if webdriver is None or not chromium or not driver_bin:
        missing = "selenium" if webdriver is None else "chromium and chromedriver"
        if os.environ.get("CI"):
            pytest.fail(f"{missing} not installed: scripts/setup.sh installs them (CI must run the page's browser test)")
        pytest.skip(f"{missing} not installed (scripts/setup.sh installs them)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def send_from_page(driver, url: str, prompt: str, max_tokens: str, key: str) -> dict[str, str]:
    """Type into the page as a person does, press Send, wait until every column has finished;
    {model id: its answer text, or its error text}."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url + "/")
    for field, value in (("prompt", prompt), ("max_tokens", max_tokens), ("key", key)):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, "send").click()
    done = ("return document.querySelectorAll('#answers .col').length > 0 && [...document.querySelectorAll("
            "'#answers .col')].every(c => c.querySelector('.meta').textContent || c.querySelector('pre.err'))"
            " || document.querySelector('#status.err') !== null")
    WebDriverWait(driver, 180, poll_frequency=0.2).until(lambda d: d.execute_script(done))
    cols = driver.find_elements(By.CSS_SELECTOR, "#answers .col")
    return {c.find_element(By.TAG_NAME, "h3").text: c.find_element(By.TAG_NAME, "pre").get_attribute("textContent")
            for c in cols}


def test_the_page_shows_every_models_answer_side_by_side_in_a_browser(browser, servers, tiny_model):
    """The page in headless chromium: a prompt sent from it gets the base's and every adapter's
    answer in its own column, each the greedy text the API gives; errors are shown, not swallowed."""
    from selenium.webdriver.common.by import By
    srv = servers["torch"]
    shown = send_from_page(browser, srv.url, Q, "12", KEY)
    want = {m: chat(srv, m, max_tokens=12).choices[0].message.content for m in (str(tiny_model), "a", "b", "c")}
    assert shown == want and len(set(want.values())) == 4
    metas = [m.text for m in browser.find_elements(By.CSS_SELECTOR, "#answers .col .meta")]
    assert all(m.startswith("finish: length, 12 tokens") for m in metas), metas
    send_from_page(browser, srv.url, Q, "12", "wrong-key")  # the server refuses the key: the page says so
    status = browser.find_element(By.ID, "status")
    assert "err" in status.get_attribute("class") and "missing or wrong API key" in status.text
    errors = send_from_page(browser, srv.url, Q, "0", KEY)  # a bad field: each column shows the 400's message
    assert set(errors) == set(want) and all(t.startswith("max_tokens:") for t in errors.values()), errors


# ---------------------------------------------------------------- adapters loaded at runtime

def lora(srv, route: str, **body) -> httpx.Response:
    return httpx.post(f"{srv.url}/v1/{route}_lora_adapter", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=120)


@pytest.fixture(scope="module")
def odd_adapters(adapters, tmp_path_factory):
    """Under the allowed root: a copy of `a` recorded as trained on other base weights, and a
    symlink to a copy of `a` that lies outside the root."""
    root = adapters["a"].parents[1]
    other = root / "other-base"
    shutil.copytree(adapters["a"], other)
    meta = json.loads((other / "twinlora.json").read_text())
    meta["base_model"]["sha256"] = "0" * 64
    (other / "twinlora.json").write_text(json.dumps(meta))
    outside = tmp_path_factory.mktemp("outside") / "a"
    shutil.copytree(adapters["a"], outside)
    (root / "link").symlink_to(outside, target_is_directory=True)
    return {"other": other, "outside": outside, "link": root / "link", "root": root}


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_adapters_load_and_unload_at_runtime_with_vllms_fields(servers, adapters, odd_adapters, tiny_model, backend):
    srv, base = servers[backend], str(tiny_model)
    base_text, a_text = (chat(srv, m, max_tokens=10).choices[0].message.content for m in (base, "a"))
    r = lora(srv, "load", lora_name="d", lora_path=str(adapters["a"]))
    assert (r.status_code, r.text) == (200, "Success: LoRA adapter 'd' added successfully.")
    rows = {m.id: m for m in srv.client().models.list().data}
    assert rows["d"].parent == base and rows["d"].root == str(adapters["a"].resolve())
    assert chat(srv, "d", max_tokens=10).choices[0].message.content == a_text != base_text  # a's weights
    refusals = [
        ({"lora_name": "d", "lora_path": str(adapters["b"])}, 400, "The lora adapter 'd' has already been loaded."),
        ({"lora_name": base, "lora_path": str(adapters["b"])}, 400, f"'{base}' is the base model's id"),
        ({"lora_name": "e"}, 400, "Both 'lora_name' and 'lora_path' must be provided."),
        ({"lora_name": "e", "lora_path": str(odd_adapters["outside"])}, 400, "is outside the directories"),
        ({"lora_name": "e", "lora_path": str(odd_adapters["link"])}, 400, "is outside the directories"),
        ({"lora_name": "e", "lora_path": str(odd_adapters["root"])}, 404, "No adapter found at"),
        ({"lora_name": "e", "lora_path": str(odd_adapters["other"])}, 400, "adapter was trained on base"),
    ]
    for body, status, needle in refusals:
        r = lora(srv, "load", **body)
        assert r.status_code == status and needle in r.json()["error"]["message"], (body, r.text)
    assert [m.id for m in srv.client().models.list().data] == list(rows)  # nothing half-loaded
    r = lora(srv, "unload", lora_name="d")
    assert (r.status_code, r.text) == (200, "Success: LoRA adapter 'd' removed successfully.")
    with pytest.raises(openai.NotFoundError):
        chat(srv, "d", max_tokens=2)
    r = lora(srv, "unload", lora_name="d")
    assert (r.status_code, r.json()["error"]["message"]) == (404, "The lora adapter 'd' cannot be found.")
    r = lora(srv, "unload", lora_name=base)
    assert r.status_code == 400 and "cannot be unloaded" in r.json()["error"]["message"]
    # the base and the startup adapter answer as before: nothing reloaded, nothing left active
    assert [chat(srv, m, max_tokens=10).choices[0].message.content for m in (base, "a")] == [base_text, a_text]


def test_runtime_loading_is_off_without_a_root_and_never_reloads_the_base(tiny_model, adapters):
    """In-process: without --allow-adapter-root both routes are 404 with how to turn them on; an
    adapter loaded at runtime sits over the same base weights (the same tensors, not a reload)."""
    from fastapi.testclient import TestClient

    from jobs.openai_api import create_app
    from jobs.serve_adapters import load_onto
    from jobs.serving import Engine, load_served
    served = load_served("torch", str(tiny_model), [], lambda *a, **k: None)
    with TestClient(create_app(served, Engine(1))) as client:
        for route in ("load", "unload"):
            r = client.post(f"/v1/{route}_lora_adapter", json={"lora_name": "d", "lora_path": str(adapters["a"])})
            assert r.status_code == 404 and "--allow-adapter-root" in r.json()["error"]["message"]
    be = served.opened.backend
    weights = {n: p for n, p in be.base_model().named_parameters()}
    target = load_onto(served, "runtime_1", "d", adapters["a"])
    after = {n.replace(".base_layer", ""): p for n, p in be.base_model().named_parameters() if "lora_" not in n}
    assert target.key == "runtime_1" and served.opened.backend is be
    assert after.keys() == weights.keys() and all(after[n] is p for n, p in weights.items())


def test_mlx_prompt_cache_starts_from_a_shared_prefix_and_answers_the_same(tiny_model, adapters, monkeypatch):
    """serve keeps answered prompts' keys and values on MLX (as mlx_lm.server does): the same
    prompt again, or a chat that continues it, computes only what is new, per adapter and for the
    bare base apart, and the answer is the one computed from scratch; adapters changing clear it."""
    from backends.mlx.prompt_cache import Prefixes
    from jobs.session import add_adapter, eos_ids, open_model, prompt_ids
    opened = open_model("mlx", str(tiny_model), adapter=adapters["a"])
    add_adapter(opened, "c", adapters["c"])
    be, eos = opened.backend, eos_ids(opened.tokenizer)
    ids = prompt_ids(opened, [{"role": "user", "content": Q}])

    def answer(key, prompt):
        be.set_active_adapter(key or "default")
        if key is None:
            with be.base_only():
                return be.generate(prompt, 12, eos)
        return be.generate(prompt, 12, eos)

    fresh = {k: answer(k, ids) for k in ("default", "c", None)}
    computed = []
    start = Prefixes.start
    monkeypatch.setattr(Prefixes, "start", lambda self, w, p: computed.append(len((r := start(self, w, p))[1])) or r)
    be.cache_prompts(4)
    assert [answer(k, ids) for k in ("default", "default", "c", None, "c")] == [fresh[k] for k in
                                                                               ("default", "default", "c", None, "c")]
    assert computed == [len(ids), 1, len(ids), len(ids), 1]  # each set of weights has its own cache
    follow = ids + fresh["default"] + prompt_ids(opened, [{"role": "user", "content": "Et L102-1 ?"}])[1:]
    be.cache_prompts(0)
    want = answer("default", follow)
    be.cache_prompts(4)
    answer("default", ids)
    assert answer("default", follow) == want and computed[-1] == len(follow) - len(ids) - len(fresh["default"])
    be.remove_adapter("c")  # the adapters changed: nothing kept is reused
    answer("default", ids)
    assert computed[-1] == len(ids)


def test_warning_when_listening_beyond_this_machine_without_a_key():
    from jobs.serving import host_warning
    assert host_warning("127.0.0.1", None) is None and host_warning("0.0.0.0", "k") is None
    assert host_warning("0.0.0.0", None).startswith("warning: listening on 0.0.0.0 without --api-key")


# ---------------------------------------------------------------- concurrency and parity

def test_20_concurrent_clients_over_three_adapters_and_the_base_get_their_solo_answers(servers, tiny_model):
    srv = servers["torch"]
    models = [str(tiny_model), "a", "b", "c"]
    jobs = [(models[i % 4], f"Que dit l'article L{110 + i}-1 ?", {"temperature": 0.9, "seed": i} if i % 3 else {})
            for i in range(20)]
    solo = [chat(srv, m, p, max_tokens=10, **kw).choices[0].message.content for m, p, kw in jobs]
    got, failures = [None] * 20, []

    def client(i: int) -> None:
        m, p, kw = jobs[i]
        try:
            if i % 2:
                got[i] = "".join(e.choices[0].delta.content or "" for e in chat(srv, m, p, max_tokens=10, stream=True, **kw))
            else:
                got[i] = chat(srv, m, p, max_tokens=10, **kw).choices[0].message.content
        except Exception as exc:  # noqa: BLE001  (counted and shown)
            failures.append(f"{i}: {exc!r}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == [] and got == solo
    assert len(set(solo)) > 10


def test_logprobs_agree_between_the_torch_and_the_mlx_server(servers, capsys):
    from jobs.parity import MAX_ABS_LOGIT_TOL
    res = {b: chat(servers[b], "a", max_tokens=8, logprobs=True, top_logprobs=5) for b in ("torch", "mlx")}
    t, m = (res[b].choices[0] for b in ("torch", "mlx"))
    assert t.message.content == m.message.content
    gap = 0.0
    for st, sm in zip(t.logprobs.content, m.logprobs.content, strict=True):
        assert st.token == sm.token and [x.token for x in st.top_logprobs] == [x.token for x in sm.top_logprobs]
        gap = max(gap, abs(st.logprob - sm.logprob), *(abs(a.logprob - b.logprob)
                                                      for a, b in zip(st.top_logprobs, sm.top_logprobs)))
    with capsys.disabled():
        print(f"\n[serve parity] max |Δlogprob| torch vs mlx over HTTP: {gap:.2e} (tolerance {MAX_ABS_LOGIT_TOL:.0e})")
    assert gap <= MAX_ABS_LOGIT_TOL
    assert "warning: listening on 0.0.0.0 without --api-key" in servers["mlx"].err.read_text()
