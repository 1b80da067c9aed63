"""Token ids and the loss mask, built once in the shared layer and handed to both backends.

Convention: `mask[t] == 1` means token `ids[t]` is a training target (predicted from ids[:t]).
The prompt and the completion are tokenized separately and concatenated, exactly as generation
sees them (the prompt ids are what the model is fed at inference time).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from common.data.formats import Example
from common.errors import DataError, ModelError
from common.training.templates import Renderer

log = logging.getLogger("twinlora")


@dataclass(frozen=True)
class Tokenized:
    ids: tuple[int, ...]
    mask: tuple[int, ...]
    source: str = ""

    @property
    def n_targets(self) -> int:
        return sum(self.mask[1:])


def load_tokenizer(model_dir: str | Path):
    """The HF tokenizer of a model directory (no torch needed)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:
        raise ModelError(f"cannot load the tokenizer ({exc})", where=str(model_dir),
                         fix="the model directory needs tokenizer.json or tokenizer.model") from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


class Tokenizer:
    """Renders and tokenizes Examples with one tokenizer, template and mask policy."""

    def __init__(self, tokenizer, template: str = "chat", system_prompt: str | None = None,
                 mask_prompt: bool = True, max_length: int = 512, too_long: str = "truncate",
                 train_on: str = "all_assistant"):
        self.tok = tokenizer
        self.renderer = Renderer(tokenizer, template, system_prompt)
        self.mask_prompt = mask_prompt
        # mask_prompt: false trains every token, whatever train_on says
        self.train_on = train_on if mask_prompt else "all"
        self.max_length = max_length
        self.too_long = too_long
        self.eos_id = tokenizer.eos_token_id
        # truncated: examples cut to max_length; cut_targets: those of them that lose trained tokens;
        # targets_lost / targets: trained tokens cut off / in all examples before cutting
        self.stats = {"truncated": 0, "dropped": 0, "cut_targets": 0, "targets_lost": 0, "targets": 0}

    def encode_prompt(self, ex: Example) -> list[int]:
        """Ids of the prompt alone: what generation starts from."""
        text = self.renderer.prompt(ex)
        return self._encode(text, first=True)

    def _encode(self, text: str, first: bool) -> list[int]:
        if not text:
            return []
        # A chat template writes its own BOS text; raw text gets the tokenizer's special tokens.
        add_special = first and self.renderer.mode == "raw"
        return list(self.tok(text, add_special_tokens=add_special)["input_ids"])

    def encode(self, ex: Example) -> Tokenized | None:
        # Each piece is tokenized on its own (the last prompt exactly as generation sees it);
        # a piece is trained or not as a whole (data.train_on).
        ids: list[int] = []
        mask: list[int] = []
        for text, trained in self.renderer.segments(ex, self.train_on):
            piece = self._encode(text, first=not ids)
            ids += piece
            mask += [int(trained or self.train_on == "all" or not ex.is_chat)] * len(piece)
        if self.renderer.mode == "raw" and self.eos_id is not None:
            ids.append(self.eos_id)
            mask.append(1)
        self.stats["targets"] += sum(mask[1:])
        if len(ids) > self.max_length:
            if self.too_long == "error":
                raise DataError(f"example is {len(ids)} tokens, longer than data.max_length={self.max_length}",
                                where=ex.source, fix="raise data.max_length, shorten the record, or set data.too_long: truncate")
            if self.too_long == "drop":
                self.stats["dropped"] += 1
                return None
            lost = sum(mask[self.max_length:])
            ids, mask = ids[: self.max_length], mask[: self.max_length]
            self.stats["truncated"] += 1
            self.stats["cut_targets"] += lost > 0
            self.stats["targets_lost"] += lost
        if sum(mask[1:]) == 0:
            self.stats["dropped"] += 1
            self.stats.setdefault("dropped_sources", []).append(ex.source)
            return None
        return Tokenized(tuple(ids), tuple(mask), ex.source)

    def encode_all(self, examples: list[Example], where: str = "dataset") -> list[Tokenized]:
        out = [t for t in (self.encode(ex) for ex in examples) if t is not None]
        self.stats["examples"] = len(examples)
        # (truncation is reported once, by the caller: see truncation_warning)
        if self.stats["dropped"]:
            log.warning("%s: %d examples had no completion token within max_length=%d and were skipped "
                        "(first: %s)", where, self.stats["dropped"], self.max_length,
                        self.stats.get("dropped_sources", ["?"])[0])
        if not out:
            raise DataError("dataset is empty after tokenization (every example was dropped)", where=where,
                            fix="raise data.max_length or check that completions are not empty")
        return out


def truncation_warning(stats: dict, max_length: int, what: str = "training") -> str | None:
    """One line saying how many examples were cut and how many of them lose trained tokens."""
    if not stats.get("truncated"):
        return None
    total = stats.get("examples")
    return (f"[twinlora] warning: {stats['truncated']}{f' of {total}' if total else ''} {what} examples truncated "
            f"to max_length={max_length}; {stats['cut_targets']} lose completion tokens "
            f"({stats['targets_lost']:,} of {stats['targets']:,} trained tokens cut) — raise data.max_length "
            "to keep them")
