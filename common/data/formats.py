"""Every supported input shape converts into one record type, `Example`.

Shapes (one JSON object per line, extra keys allowed and kept in `meta`):
- ``{"text": ...}``                               plain text, every token trained
- ``{"instruction", "input"?, "output"}``         Alpaca
- ``{"prompt", "completion"}``                    prompt/completion
- ``{"messages": [{"role", "content"}, ...]}``    chat; the last message must be the assistant's

Chat-like shapes become a list of messages; the completion is the last assistant message.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from common.errors import DataError
from common.runs.io import iter_jsonl, read_json

ROLES = ("system", "user", "assistant")
SHAPES = {
    "text": ("text",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
}
SHAPE_HELP = ('one of: {"text"}, {"instruction", "input", "output"} (Alpaca), '
              '{"prompt", "completion"}, {"messages": [{"role", "content"}, ...]}')


@dataclass(frozen=True)
class Example:
    """One training or evaluation example, whatever shape it came in."""

    messages: tuple[dict, ...] = ()
    text: str | None = None
    source: str = ""
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def is_chat(self) -> bool:
        return self.text is None

    @property
    def completion(self) -> str:
        return self.text if self.text is not None else self.messages[-1]["content"]


def user_turn(text: str, source: str = "prompt") -> Example:
    """A one-question chat (empty answer): what a generation prompt is rendered from."""
    return Example(messages=({"role": "user", "content": text}, {"role": "assistant", "content": ""}), source=source)


def detect_shape(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    for shape, keys in SHAPES.items():
        if all(k in obj for k in keys):
            return shape
    return None


def _require_str(obj: dict, key: str, where: str, optional: bool = False) -> str:
    value = obj.get(key, "" if optional else None)
    if not isinstance(value, str):
        raise DataError(f'field "{key}" must be a string, got {type(value).__name__}', where=where,
                        fix=f'give "{key}" a text value')
    return value


def to_example(obj: Any, where: str) -> Example:
    """Convert one parsed record; `where` is "file:line" for error messages."""
    shape = detect_shape(obj)
    if shape is None and isinstance(obj, dict) and ("chosen" in obj or "rejected" in obj):
        raise DataError('record is a preference pair ("chosen"/"rejected"), and training.objective is sft',
                        where=where, fix="set training.objective: dpo (--set training.objective=dpo) to train on pairs")
    if shape is None:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"record has no known shape (keys: {keys})", where=where,
                        fix=f"use {SHAPE_HELP}")
    meta = {k: v for k, v in obj.items() if k not in ("text", "instruction", "input", "output",
                                                       "prompt", "completion", "messages", "system")}
    if shape == "text":
        text = _require_str(obj, "text", where)
        if not text.strip():
            raise DataError('field "text" is empty', where=where, fix="remove the record or fill it")
        return Example(text=text, source=where, meta=meta)
    system = obj.get("system")
    msgs: list[dict] = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    if shape == "alpaca":
        instruction = _require_str(obj, "instruction", where)
        extra = _require_str(obj, "input", where, optional=True)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        msgs += [{"role": "user", "content": user},
                 {"role": "assistant", "content": _require_str(obj, "output", where)}]
    elif shape == "prompt_completion":
        msgs += [{"role": "user", "content": _require_str(obj, "prompt", where)},
                 {"role": "assistant", "content": _require_str(obj, "completion", where)}]
    else:
        raw = obj["messages"]
        if not isinstance(raw, list) or not raw:
            raise DataError('"messages" must be a non-empty list', where=where,
                            fix='give a list of {"role", "content"} objects')
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise DataError(f'messages[{i}] needs "role" and "content"', where=where,
                                fix='write each message as {"role": ..., "content": ...}')
            if m["role"] not in ROLES:
                raise DataError(f'messages[{i}] has unknown role "{m["role"]}"', where=where,
                                fix=f"use one of {', '.join(ROLES)}")
            if not isinstance(m["content"], str):
                raise DataError(f'messages[{i}].content must be a string', where=where,
                                fix="give the content as text")
            msgs.append({"role": m["role"], "content": m["content"]})
    if msgs[-1]["role"] != "assistant":
        raise DataError("the last message must be the assistant's (it is what the model learns)",
                        where=where, fix="end each conversation with an assistant turn")
    if not msgs[-1]["content"].strip():
        raise DataError("the completion (last assistant message) is empty", where=where,
                        fix="fill it or drop the record")
    return Example(messages=tuple(msgs), source=where, meta=meta)


def data_records(path: str | Path) -> Iterable[tuple[str, Any]]:
    """(where, record) of a .jsonl file, or of a .json file holding a list (SFT data and preference
    pairs read their files the same way)."""
    path = Path(path)
    if path.suffix == ".json":
        data = read_json(path, "data file")
        if not isinstance(data, list):
            raise DataError("a .json data file must hold a list of records", where=str(path),
                            fix="use JSONL (one record per line) or a JSON list")
        return ((f"{path}:record {i}", o) for i, o in enumerate(data, 1))
    return ((f"{path}:{n}", o) for n, o in iter_jsonl(path))


def load_examples(path: str | Path) -> list[Example]:
    """Load a .jsonl file (or a .json file holding a list) into Examples; never returns empty."""
    examples = [to_example(obj, where) for where, obj in data_records(path)]
    if not examples:
        raise DataError("dataset is empty", where=str(path), fix="add at least one record")
    return examples
