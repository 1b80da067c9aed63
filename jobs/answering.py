"""Answering with one loaded base and its named adapters: the loop behind `generate` (prompts,
terminal chat) and `serve` (HTTP), written once so both give the same text for the same model,
prompt and sampling."""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from jobs.session import PROMPT_FIX, Opened, eos_ids, fit_context, prompt_ids


@dataclass(frozen=True)
class Target:
    """What answers: the base (key None) or a loaded adapter (its backend name), with the template
    and system prompt it is prompted with."""
    label: str
    key: str | None
    template: str = "chat"
    system: str | None = None


@dataclass
class Answer:
    text: str
    tokens: list[int]
    prompt_tokens: int
    finish_reason: str                 # "stop": end of turn or a stop string; "length": the token budget
    logprobs: list[dict] | None = None  # per token: {"id", "logprob", "top": [(id, logprob), ...]}


class Stop(Exception):
    """Raised from a token callback to end an answer early (a stop string, a client gone)."""


@contextlib.contextmanager
def selected(opened: Opened, target: Target):
    """The target's weights active while the block runs: an adapter by name (swapped in only when
    another is active), or the bare base (adapters loaded at runtime included)."""
    be = opened.backend
    if target.key is None:
        with be.base_only():
            yield
        return
    if be.active_adapter != target.key:
        be.set_active_adapter(target.key)
    yield


class Deltas:
    """Token ids → text pieces as the answer grows: whole characters only, trailing whitespace
    held until text follows (answers are stripped), cut at the first stop string (raises Stop)."""

    def __init__(self, tokenizer, write=None, stops=()):
        self.tokenizer, self.write, self.stops = tokenizer, write, [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.ids, self.shown, self.cut = [], "", None

    def __call__(self, token_id: int) -> None:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.cut = text[:min(hits)].strip()
            self._show(self.cut)
            raise Stop("stop string")
        if not text.endswith("\ufffd"):
            safe = text.rstrip()
            self._show(safe[:len(safe) - self.hold])

    def _show(self, text: str) -> None:
        if self.write is not None and text.startswith(self.shown) and len(text) > len(self.shown):
            self.write(text[len(self.shown):])
            self.shown = text

    def finish(self, final: str) -> None:
        self._show(final)


class Logprobs:
    """A sampler that also records each step's log-probabilities (of the model's distribution,
    before temperature) and the `top` most likely tokens; picks as common.training.sampling does."""

    def __init__(self, sampling, top: int):
        from common.training.sampling import Sampler, Sampling
        self.pick, self.top, self.steps = Sampler(sampling or Sampling()), top, []

    def __call__(self, logits) -> int:
        import numpy as np
        from jobs.parity import log_softmax
        lp = log_softmax(np.asarray(logits).reshape(-1))
        token = self.pick(logits)
        best = np.argsort(-lp, kind="stable")[:self.top]
        self.steps.append({"id": token, "logprob": float(lp[token]), "top": [(int(i), float(lp[i])) for i in best]})
        return token


def generate_ids(opened: Opened, target: Target, ids: list[int], max_new_tokens: int, sampling=None,
                 on_text=None, stops=(), top_logprobs: int | None = None, cancelled=None) -> Answer:
    """The target's continuation of prompt `ids`: greedy or sampled (a fresh seeded generator per
    answer), `on_text(piece)` streaming, cut at `stops`, with logprobs when `top_logprobs` is not
    None; `cancelled()` true ends it early (finish_reason "cancelled")."""
    from common.training.sampling import Sampler
    record = Logprobs(sampling, top_logprobs) if top_logprobs is not None else None
    sampler = record or (Sampler(sampling) if sampling is not None and not sampling.greedy else None)
    deltas, taken = Deltas(opened.tokenizer, on_text, stops), []
    reason = None

    def take(token_id: int) -> None:
        if cancelled is not None and cancelled():
            raise Stop("cancelled")
        taken.append(token_id)
        deltas(token_id)

    with selected(opened, target):
        try:
            out = opened.backend.generate(ids, max_new_tokens, eos_ids(opened.tokenizer), sampler=sampler, on_token=take)
        except Stop:
            out, reason = taken, "stop" if deltas.cut is not None else "cancelled"
    text = deltas.cut if deltas.cut is not None else opened.tokenizer.decode(out, skip_special_tokens=True).strip()
    deltas.finish(text)
    reason = reason or ("length" if len(out) >= max_new_tokens else "stop")
    return Answer(text, list(out), len(ids), reason, record.steps[:len(out)] if record else None)


def answer_messages(opened: Opened, target: Target, messages: list[dict], max_new_tokens: int, sampling=None,
                    on_text=None, where: str = "--prompt", fix: str = PROMPT_FIX, note=None, **options) -> Answer:
    """The target's next turn after `messages` (ending with a user turn), rendered with its
    template and system prompt as in training; the answer is cut where the context ends."""
    ids = prompt_ids(opened, messages, target.template, target.system)
    budget = fit_context(opened, len(ids), max_new_tokens, where, fix, note)
    return generate_ids(opened, target, ids, budget, sampling, on_text, **options)


def answer_prompts(opened: Opened, targets: list[Target], prompts: list[str], max_new_tokens: int, sampling,
                   stream: bool, echo) -> None:
    """`generate --prompt`: every prompt checked against the context first, then each prompt
    answered by each target in turn (labelled when there are several). Several greedy prompts,
    not streamed, go through the backend's batched generation (`batched_answers`): the same text."""
    batched = (not stream and len(prompts) > 1 and (sampling is None or sampling.greedy)
               and opened.backend.capabilities.batched_generation)
    said = (lambda m: echo(m, err=True)) if batched else (lambda m: None)   # else said when answered
    ids = {(p, t): prompt_ids(opened, [{"role": "user", "content": p}], t.template, t.system)
           for p in prompts for t in targets}
    budgets = {key: fit_context(opened, len(v), max_new_tokens, "--prompt", PROMPT_FIX, note=said)
               for key, v in ids.items()}
    texts = {}
    for t in targets if batched else []:
        keys = [(p, t) for p in prompts]
        texts.update(zip(keys, batched_answers(opened, t, [ids[k] for k in keys], [budgets[k] for k in keys])))
    for p in prompts:
        for t in targets:
            echo(f">>> [{t.label}] {p}" if len(targets) > 1 else f">>> {p}")
            if (p, t) in texts:
                echo(texts[p, t] + "\n")
                continue
            write = (lambda piece: echo(piece, nl=False)) if stream else None
            a = answer_messages(opened, t, [{"role": "user", "content": p}], max_new_tokens, sampling, write,
                                note=lambda m: echo(m, err=True))
            echo(("" if stream else a.text) + "\n")


BATCH = 8   # prompts per batched call, as eval's default --batch-size


def batched_answers(opened: Opened, target: Target, ids: list[list[int]], budgets: list[int]) -> list[str]:
    """The target's greedy answers to the prompts `ids`, BATCH at a time through evaluation's one
    chunk generator (a chunk whose budgets the context cut differently goes one prompt at a time)."""
    from jobs.evaluation import generate_chunk
    stops, out = eos_ids(opened.tokenizer), []
    with selected(opened, target):
        for start in range(0, len(ids), BATCH):
            out += generate_chunk(opened.backend, ids[start:start + BATCH], budgets[start:start + BATCH], stops, True)
    return [opened.tokenizer.decode(o, skip_special_tokens=True).strip() for o in out]


def chat(opened: Opened, target: Target, max_new_tokens: int, sampling, read_line, echo, error) -> None:
    """`generate --chat`: user turns from `read_line` until /exit or end of input; the whole
    conversation is the prompt; a turn past the context is refused and the chat goes on."""
    from common.errors import UserError
    history: list[dict] = []
    echo(f"[twinlora] chat with {target.label} ({sampling.describe()}); /reset clears the history, /exit quits")
    while True:
        echo("you> ", nl=False)
        line = read_line()
        if not line:
            echo("")
            return
        text = line.strip()
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history.clear()
            echo("[twinlora] history cleared")
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        try:
            budget = fit_context(opened, len(prompt_ids(opened, history, target.template, target.system)),
                                 max_new_tokens, "--chat", "send a shorter message, or /reset the history",
                                 note=lambda m: echo(m, err=True))
        except UserError as exc:
            history.pop()
            error(str(exc))
            continue
        echo(f"{target.label}> ", nl=False)
        a = answer_messages(opened, target, history, budget, sampling, lambda piece: echo(piece, nl=False))
        echo("")
        history.append({"role": "assistant", "content": a.text})


def named_adapter(value: str) -> tuple[str, str]:
    """"NAME=DIR" or "DIR" (named after the directory, or its parent for a run's adapter/); an
    empty one, or a NAME= without its directory, is refused here (it would read as the current folder)."""
    name, sep, path = value.partition("=")
    if not value.strip() or (sep and not path.strip() and not Path(value).exists()):
        raise UserError(f"{value!r} gives no adapter directory", where="--adapter",
                        fix="write --adapter NAME=DIR or --adapter DIR, e.g. --adapter legal=runs/legal/adapter")
    if sep and not Path(value).exists():
        if not re.fullmatch(r"[\w.-]+", name):
            raise UserError(f"adapter name {name!r} (before '=' in {value!r}) holds characters a name cannot",
                            where="--adapter", fix="name it with letters, digits, '.', '_' or '-', e.g. "
                            "--adapter legal=runs/legal/adapter (or give an existing directory alone)")
        return name, path
    p = Path(value)
    return (p.parent.name if p.name == "adapter" else p.name) or value, value
