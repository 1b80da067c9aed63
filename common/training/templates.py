"""Render an Example into (prompt text, completion text).

Both backends train on exactly these strings, tokenized once in `common.training.tokenize`.
- "chat": the tokenizer's own chat template (from tokenizer_config / chat_template.jinja);
- a path to a Jinja file: used as the chat template instead;
- "raw": no template, prompt + completion (+ EOS added at tokenization), as TRL does for
  prompt-completion rows.
The completion is the last assistant turn; everything before it is the prompt. `segments` cuts
the full text at every assistant turn, so `common.training.tokenize` can train all of them
(data.train_on: all_assistant) with one mask for both backends.

Every Jinja file twinlora reads (a data.template file, a recipe's prompt files) goes through
`common.data.jinja_files.load_template`.
"""
from __future__ import annotations

from pathlib import Path

from common.data.formats import Example
from common.data.jinja_files import load_template
from common.errors import ConfigError, DataError


def chat_template(template: str) -> str | None:
    """The Jinja chat-template text of data.template: a file's text; None for "chat"/"raw"."""
    if template in ("chat", "raw"):
        return None
    return load_template(template, where=template,
                         fix='set data.template to "chat", "raw" or a path to a .jinja file').text


class Renderer:
    """Turns Examples into prompt/completion text with one fixed template."""

    def __init__(self, tokenizer, template: str = "chat", system_prompt: str | None = None):
        self.tokenizer = tokenizer
        self.mode = "raw" if template == "raw" else "chat"
        self.chat_template = chat_template(template)
        self.system_prompt = system_prompt
        if self.mode == "chat" and self.chat_template is None and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("the tokenizer has no chat template, and data.template is \"chat\"",
                              where="data.template",
                              fix='set data.template to a .jinja chat-template file or to "raw"')

    def _messages(self, ex: Example) -> list[dict]:
        msgs = list(ex.messages)
        if self.system_prompt and msgs and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        return msgs

    def _apply(self, msgs: list[dict], add_generation_prompt: bool, where: str) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=add_generation_prompt,
                chat_template=self.chat_template)
        except Exception as exc:  # jinja errors: undefined variable, raise_exception(...) in template
            raise DataError(f"the chat template failed on this record ({exc})", where=where,
                            fix="check the record's roles or the template") from exc

    def prompt(self, ex: Example) -> str:
        """The text the model sees before it answers (for generation and for the loss mask)."""
        if ex.text is not None:
            return ""
        msgs = self._messages(ex)[:-1]
        if self.mode == "raw":
            return "\n".join(m["content"] for m in msgs)
        return self._apply(msgs, True, ex.source)

    def render(self, ex: Example) -> tuple[str, str]:
        """(prompt, completion): concatenated they are the full training text."""
        if ex.text is not None:
            return "", ex.text
        prompt = self.prompt(ex)
        if self.mode == "raw":
            return prompt, ex.completion
        full = self._apply(self._messages(ex), False, ex.source)
        if not full.startswith(prompt):
            # Some templates render the last turn differently once it is not the final one
            # (e.g. they strip reasoning); then the prompt is not a prefix and masking is ambiguous.
            raise DataError("the chat template's prompt is not a prefix of the full conversation",
                            where=ex.source, fix="use a template whose generation prompt is a prefix "
                            "of the rendered conversation, or data.template: raw")
        return prompt, full[len(prompt):]

    def segments(self, ex: Example, train_on: str = "last") -> list[tuple[str, bool]]:
        """The full training text as (text, trained) pieces, in order, consecutive pieces merged.

        "last" (and single-turn records): [(prompt, False), (completion, True)], as `render`.
        "all_assistant": every assistant turn's text (its content and the template's end-of-turn
        text) is trained, found by rendering the conversation up to each assistant turn with and
        without it, as TRL's assistant mask and Axolotl's roles_to_train do.
        """
        prompt, completion = self.render(ex)
        msgs = self._messages(ex)
        earlier = [i for i, m in enumerate(msgs[:-1]) if m["role"] == "assistant"]
        if ex.text is not None or train_on != "all_assistant" or not earlier:
            return [(prompt, False), (completion, True)]
        if self.mode == "raw":
            # raw prompt = "\n".join(contents of msgs[:-1]): each assistant content is trained
            pieces = []
            for i, m in enumerate(msgs[:-1]):
                pieces += [(m["content"], m["role"] == "assistant"), ("\n", False)]
            pieces = pieces[:-1] + [(completion, True)]
        else:
            full, pieces, pos = prompt + completion, [], 0
            for i in earlier:
                before = self._apply(msgs[:i], True, ex.source)
                upto = self._apply(msgs[: i + 1], False, ex.source)
                if not (upto.startswith(before) and prompt.startswith(upto) and len(before) >= pos):
                    raise DataError(f"the chat template renders assistant turn messages[{i}] differently inside "
                                    "the conversation, so its tokens cannot be located", where=ex.source,
                                    fix="set data.train_on: last (train the last assistant turn only), or use "
                                    "a template that renders earlier turns unchanged")
                pieces += [(full[pos:len(before)], False), (full[len(before):len(upto)], True)]
                pos = len(upto)
            pieces += [(full[pos:len(prompt)], False), (completion, True)]
        merged: list[tuple[str, bool]] = []
        for text, trained in pieces:
            if not text:
                continue
            if merged and merged[-1][1] == trained:
                merged[-1] = (merged[-1][0] + text, trained)
            else:
                merged.append((text, trained))
        return merged
