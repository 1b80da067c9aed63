"""`cli.py generate`'s job: check the request, load the base and the named adapters, resolve the
template and system prompt, then answer the prompts (jobs/answering.py) or hold a terminal chat."""
from __future__ import annotations

from common.errors import UserError
from jobs.answering import Target, answer_prompts, chat as chat_loop, named_adapter


def _check_prompts(prompts: list[str], chat: bool, template) -> None:
    """Something to answer, and with --template raw nothing empty to continue."""
    if not prompts and not chat:
        raise UserError("nothing to answer", where="generate", fix="pass --prompt TEXT (repeatable) or --chat")
    if template == "raw" and not all(p.strip() for p in prompts):
        raise UserError("an empty --prompt with --template raw gives the model nothing to continue", where="--prompt",
                        fix="give a non-empty prompt")


def _check_named(named: list, with_base: bool, chat: bool) -> None:
    """Adapter names are unique; a chat talks with one model."""
    if len({label for label, _ in named}) < len(named):
        raise UserError("two --adapter values have the same name", where="--adapter",
                        fix="name them: --adapter a=DIR1 --adapter b=DIR2")
    if chat and (len(named) > 1 or (with_base and named)):
        raise UserError("--chat talks with one model", where="--chat",
                        fix="pass at most one --adapter and no --base with --chat (or use --prompt to compare)")


def run_generate(prompts: list[str], adapters: list[str], with_base: bool, model, backend: str, max_new_tokens: int,
                 sampling: tuple, *, stream: bool, chat: bool, template, system, echo, readline, error) -> None:
    """Answer `prompts` (or chat on `readline`) with the base and/or each "[NAME=]DIR" adapter;
    `sampling` is (temperature, top_p, seed)."""
    from common.training.sampling import Sampling
    from jobs.evaluation import resolve_prompting
    from jobs.session import add_adapter, base_for, open_model
    sampling = Sampling(*sampling).check()
    _check_prompts(prompts, chat, template)
    named = [named_adapter(a) for a in adapters]
    _check_named(named, with_base, chat)
    model = base_for(model, named[0][1] if named else None, lambda m: echo(m, err=True))
    opened = open_model(backend, model, adapter=named[0][1] if named else None)
    template, system, origin = resolve_prompting(opened, template, system)
    if origin == "adapter" and (template != "chat" or system):
        echo(f"[twinlora] template {template!r}" + (f", system prompt {system!r}" if system else "")
             + " as recorded with the adapter (--template / --system override)", err=True)
    keys = ["default"] + [f"adapter_{i}" for i in range(1, len(named))]  # backend names; labels are for display
    for key, (_, path) in zip(keys[1:], named[1:]):
        add_adapter(opened, key, path)
    targets = ([Target("base", None, template, system)] if with_base and named else []) + \
        [Target(label, key, template, system) for (label, _), key in zip(named, keys)]
    targets = targets or [Target("base", None, template, system)]
    if chat:
        return chat_loop(opened, targets[0], max_new_tokens, sampling, readline, echo, error)
    answer_prompts(opened, targets, prompts, max_new_tokens, sampling, stream, echo)
