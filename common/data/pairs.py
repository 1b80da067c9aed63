"""Preference pairs (training.objective: dpo) in TRL's shapes, converted to one record type, `Pair`.

Shapes (one JSON object per line), as TRL's DPOTrainer reads them:
- ``{"prompt": str, "chosen": str, "rejected": str}``            standard (no template; EOS added)
- ``{"prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}``   conversational (the chat template)
- ``{"chosen": ..., "rejected": ...}``                           implicit prompt: the shared start of
  both, cut as TRL's `extract_prompt` does (messages, or characters for text)

Why strict: a pair with a side missing, both sides equal or an empty side teaches nothing, and
TRL lets it through silently; here each is one line naming the record.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.data.formats import ROLES, data_records
from common.errors import DataError

PAIR_HELP = ('{"prompt", "chosen", "rejected"} as text or as lists of {"role", "content"} messages '
             '(or {"chosen", "rejected"} with the prompt inside both)')


@dataclass(frozen=True)
class Pair:
    """One preference pair: text fields, or tuples of messages (then `is_chat`)."""
    prompt: str | tuple
    chosen: str | tuple
    rejected: str | tuple
    source: str = ""

    @property
    def is_chat(self) -> bool:
        return not isinstance(self.chosen, str)


def is_pair(obj: Any) -> bool:
    return isinstance(obj, dict) and ("chosen" in obj or "rejected" in obj)


def _kind(value: Any, key: str, where: str) -> str:
    """'text' or 'messages' (checked: each message a {"role", "content"} with a known role)."""
    if isinstance(value, str):
        return "text"
    if not isinstance(value, list):
        raise DataError(f'field "{key}" must be text or a list of messages, got {type(value).__name__}', where=where,
                        fix=f"give {PAIR_HELP}")
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise DataError(f'{key}[{i}] is not a {{"role", "content"}} message with role {"/".join(ROLES)}',
                            where=where, fix='write each message as {"role": ..., "content": "..."}')
    return "messages"


def extract_prompt(chosen, rejected):
    """TRL's extract_prompt: the longest shared start of chosen and rejected (messages, or
    characters, a space before the split going to the completions)."""
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if chosen[idx - 1] == " ":
                idx -= 1
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


def _empty(value) -> bool:
    return not value.strip() if isinstance(value, str) else not any(m["content"].strip() for m in value)


def to_pair(obj: Any, where: str) -> Pair:
    """Validate and convert one parsed record; `where` is "file:line"."""
    if not is_pair(obj):
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"record is not a preference pair (keys: {keys}), and training.objective is dpo", where=where,
                        fix=f"give {PAIR_HELP}, or set training.objective: sft for SFT data")
    missing = [k for k in ("chosen", "rejected") if k not in obj]
    if missing:
        raise DataError(f'the pair has no "{missing[0]}" side', where=where,
                        fix='give both "chosen" (the preferred answer) and "rejected" (the dispreferred one)')
    keys = [k for k in ("prompt", "chosen", "rejected") if k in obj]
    kinds = {k: _kind(obj[k], k, where) for k in keys}
    if len(set(kinds.values())) > 1:
        said = ", ".join(f'"{k}" is {v}' for k, v in kinds.items())
        raise DataError(f"the pair mixes text and chat messages ({said})", where=where,
                        fix="give prompt, chosen and rejected all as text, or all as lists of messages")
    if obj["chosen"] == obj["rejected"]:
        raise DataError('"chosen" and "rejected" are identical: the pair prefers nothing', where=where,
                        fix="drop the record, or give a different rejected answer")
    prompt, chosen, rejected = obj.get("prompt"), obj["chosen"], obj["rejected"]
    if prompt is None:
        prompt, chosen, rejected = extract_prompt(chosen, rejected)
        if not prompt:
            raise DataError('"chosen" and "rejected" share no prompt (no "prompt" field, and they differ from the '
                            "start)", where=where, fix='add a "prompt" field, or start both with the same prompt')
    for side, value in (("chosen", chosen), ("rejected", rejected)):
        if _empty(value):
            raise DataError(f'the "{side}" completion is empty', where=where, fix="fill it or drop the record")
    freeze = (lambda v: v) if isinstance(chosen, str) else (lambda v: tuple(dict(m) for m in v))
    return Pair(freeze(prompt), freeze(chosen), freeze(rejected), where)


def load_pairs(path: str | Path) -> list[Pair]:
    """A .jsonl (or .json list) file of preference pairs; never returns empty."""
    pairs = [to_pair(obj, where) for where, obj in data_records(path)]
    if not pairs:
        raise DataError("dataset is empty", where=str(path), fix="add at least one record")
    return pairs
