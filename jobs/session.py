"""Open a base model on a backend, optionally with an adapter: the step every job shares
(generate, parity, merge, eval, convert checks)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.adapters.format import AdapterSpec, load_adapter, modules_for_adapter
from common.adapters.base import check_base
from common.models.resolve import resolve_model


@dataclass
class Opened:
    backend: object
    model_dir: Path
    tokenizer: object
    spec: AdapterSpec | None = None
    meta: dict | None = None
    adapter_dir: Path | None = None
    context: int | None = None  # max_position_embeddings: prompt + answer must fit in it


def open_model(backend: str, model: str, dtype: str = "float32", quantize: str | None = None,
               adapter: str | Path | None = None, allow_base_mismatch: bool = False) -> Opened:
    from backends import get_backend
    from common.training.tokenize import load_tokenizer

    cls = get_backend(backend)
    model_dir = resolve_model(model)
    spec = meta = weights = None
    if adapter is not None:
        spec, weights, meta = load_adapter(Path(adapter))
        check_base(adapter, model_dir, model, allow_base_mismatch)
    be = cls(model_dir, dtype=dtype, quantize=quantize)
    if adapter is not None:
        modules = modules_for_adapter(spec, weights, be.linear_modules(), str(adapter))
        be.attach_lora(spec, modules, weights)
    return Opened(be, model_dir, load_tokenizer(model_dir), spec, meta,
                  Path(adapter) if adapter is not None else None, context_length(model_dir))


def context_length(model_dir: Path) -> int | None:
    """The model's context window (max_position_embeddings, of its text model for a multimodal
    config); None when its config.json does not say."""
    from common.models.families import read_raw
    cfg = read_raw(model_dir)
    n = (cfg.get("text_config") or cfg).get("max_position_embeddings")
    return int(n) if isinstance(n, int) and n > 0 else None


def fit_context(opened: Opened, n_prompt: int, max_new_tokens: int, where: str, fix: str, note=None) -> int:
    """The answer's token budget so prompt + answer fit the context, said in one line when
    max_new_tokens is cut; a prompt that leaves no room for an answer is refused before generating
    (as vLLM refuses a prompt longer than max_model_len: past it the positions were never trained
    and the cache only grows)."""
    ctx = opened.context
    if ctx is None or n_prompt + max_new_tokens <= ctx:
        return max_new_tokens
    if n_prompt >= ctx:
        from common.errors import UserError
        raise UserError(f"the prompt is {n_prompt} tokens, and the model's context holds {ctx} "
                        "(max_position_embeddings) with the answer included", where=where, fix=fix)
    (note or _stderr)(f"[twinlora] note: --max-new-tokens {max_new_tokens} capped to {ctx - n_prompt}: the prompt is "
                      f"{n_prompt} tokens and the model's context {ctx} (max_position_embeddings)")
    return ctx - n_prompt


def _stderr(message: str) -> None:
    import sys
    print(message, file=sys.stderr, flush=True)


def recorded_base(adapter: str | Path) -> tuple[str | None, str | None]:
    """(a base to load, the base as recorded) from an adapter's files (common.adapters.base.recorded,
    every layout), without loading its weights. The base to load is None when nothing is recorded,
    or when what is recorded is neither here nor a hub id."""
    from common.adapters.base import recorded
    from common.models.resolve import EMBEDDED, is_hub_id
    names = recorded(adapter)["names"]
    for n in names:
        if n in EMBEDDED or Path(n).expanduser().is_dir() or is_hub_id(n):
            return n, names[0]
    return None, names[0] if names else None


def base_for(model: str | None, adapter: str | Path | None, echo) -> str:
    """`--model` when given; without it, the base the adapter records (as PEFT's
    AutoPeftModelForCausalLM reads base_model_name_or_path), said in one line; else the embedded
    model. A recorded base that is not here is refused: the embedded one would not fit."""
    from common.errors import AdapterError
    if model is not None:
        return model
    if adapter is None:
        return "embedded"
    found, recorded = recorded_base(adapter)
    if recorded and not found:
        raise AdapterError(f"this adapter was trained on base {recorded!r}, which is not here", where=str(adapter),
                           fix="pass --model with that base model's directory or hub id")
    echo(f"[twinlora] base: {found} (recorded by the adapter; --model overrides)" if found else
         "[twinlora] base: embedded (the adapter records no base; --model overrides)")
    return found or "embedded"


def add_adapter(opened: Opened, name: str, adapter: str | Path, allow_base_mismatch: bool = False) -> AdapterSpec:
    """Load one more adapter onto an open base under `name`, without reloading the base; switch
    with `opened.backend.set_active_adapter(name)` (the one `open_model` loaded is "default").
    Adapters may differ in rank, targets, rsLoRA/DoRA."""
    spec, weights, _ = load_adapter(Path(adapter))
    check_base(adapter, opened.model_dir, str(opened.model_dir), allow_base_mismatch)
    modules = modules_for_adapter(spec, weights, opened.backend.linear_modules(), str(adapter))
    opened.backend.add_adapter(name, spec, modules, weights)
    return spec


def reply(opened: Opened, prompt: str, max_new_tokens: int, template: str = "chat",
          system_prompt: str | None = None, sampling=None, on_token=None) -> str:
    """Answer to one user message, rendered with the chat template as in training."""
    return answer(opened, [{"role": "user", "content": prompt}], max_new_tokens, template, system_prompt,
                  sampling, on_token)


def prompt_ids(opened: Opened, messages: list[dict], template: str = "chat", system_prompt: str | None = None) -> list[int]:
    """Token ids of the prompt for the model's next turn after `messages`, as in training."""
    from common.data.formats import Example
    from common.training.tokenize import Tokenizer
    ex = Example(messages=tuple(messages) + ({"role": "assistant", "content": ""},), source="prompt")
    return Tokenizer(opened.tokenizer, template, system_prompt).encode_prompt(ex)


PROMPT_FIX = "shorten the prompt, or use a model with a longer context"


def answer(opened: Opened, messages: list[dict], max_new_tokens: int, template: str = "chat",
           system_prompt: str | None = None, sampling=None, on_token=None, where: str = "--prompt",
           fix: str = PROMPT_FIX, note=None) -> str:
    """The model's next turn after `messages` (a conversation ending with a user turn): greedy, or
    sampled by `sampling` (common.training.sampling.Sampling; a fresh seeded generator per answer, so an
    answer does not depend on what was generated before it); `on_token(id)` streams. The answer
    is cut where the context ends (`fit_context`)."""
    from common.training.sampling import Sampler
    ids = prompt_ids(opened, messages, template, system_prompt)
    max_new_tokens = fit_context(opened, len(ids), max_new_tokens, where, fix, note)
    sampler = Sampler(sampling) if sampling is not None and not sampling.greedy else None
    out = opened.backend.generate(ids, max_new_tokens, eos_ids(opened.tokenizer), sampler=sampler, on_token=on_token)
    return opened.tokenizer.decode(out, skip_special_tokens=True).strip()


class TextStream:
    """on_token callback that writes the decoded text as it grows (whole characters only: a token
    may end inside a multi-byte character)."""

    def __init__(self, tokenizer, write):
        self.tokenizer, self.write, self.ids, self.shown = tokenizer, write, [], ""

    def __call__(self, token_id: int) -> None:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()  # as the final answer
        if text.endswith("\ufffd") or not text.startswith(self.shown) or text == self.shown:
            return
        self.write(text[len(self.shown):])
        self.shown = text

    def finish(self, final: str) -> None:
        """Write what is still held back (a trailing partial character) of the final answer."""
        if final.startswith(self.shown) and final != self.shown:
            self.write(final[len(self.shown):])
        self.shown = final


def eos_ids(tokenizer) -> list[int]:
    """Stop tokens: the tokenizer's EOS plus the chat end-of-turn token when it differs."""
    ids = {tokenizer.eos_token_id}
    for t in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(t)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)
