"""k-shot prompting: the baseline a tuned adapter must beat before fine-tuning earns its place.

The k examples come from the *training* split (never a test item: a training example whose
question is also a test question is not drawn), are drawn once with a seed and are the same for
every test item, and are rendered through the same template as the training data: each example
becomes an earlier user/assistant exchange of the conversation, after the item's system prompt and
before its own question (with `data.template: raw` the turns are joined by newlines, as the raw
template renders any conversation).
"""
from __future__ import annotations

import numpy as np

from common.data.formats import Example
from common.errors import ConfigError


def questions(ex: Example) -> str:
    """The user side of an example: what makes two examples "the same question"."""
    return "\n".join(m["content"] for m in ex.messages if m["role"] == "user")


def pick_shots(train: list[Example], k: int, seed: int, test: list[Example]) -> list[Example]:
    """k training examples, drawn with `seed` among those whose question is no test question."""
    asked = {questions(ex) for ex in test}
    pool = [ex for ex in train if ex.is_chat and questions(ex) not in asked]
    if k > len(pool):
        raise ConfigError(f"{k} shots asked for, but the training split has {len(pool)} usable examples",
                          where="--shots", fix=f"use at most {len(pool)} shots")
    picked = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    return [pool[i] for i in sorted(picked.tolist())]


def with_shots(ex: Example, shots: list[Example]) -> Example:
    """The item's conversation with the shots as earlier exchanges (system prompt first)."""
    system = [m for m in ex.messages[:1] if m["role"] == "system"]
    turns = [m for s in shots for m in s.messages if m["role"] != "system"]
    return Example(messages=tuple(system + turns + list(ex.messages[len(system):])), source=ex.source, meta=ex.meta)


def as_record(ex: Example) -> dict:
    """The JSONL record of an Example (messages plus its extra keys), for the eval job to read."""
    return {"messages": list(ex.messages), **ex.meta}
