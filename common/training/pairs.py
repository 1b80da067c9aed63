"""Token ids and the completion mask of preference pairs, built once here for both backends.

Exactly TRL DPOTrainer's preprocessing (1.16, `_prepare_dataset` + DataCollatorForPreference):
text pairs get EOS appended to each completion and are tokenized as prompt and prompt+completion
(no template); chat pairs through the chat template (the prompt with the generation prompt). The
completion starts where the tokenized prompt and prompt+completion diverge; each sequence is cut to
max_length keeping its start. A pair whose prompt alone fills max_length (TRL drops it silently)
is refused in one line, or dropped with data.too_long: drop.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.data.pairs import Pair
from common.errors import DataError
from common.training.templates import chat_template
from common.training.tokenize import Tokenized


@dataclass(frozen=True)
class TokenizedPair:
    chosen: Tokenized       # prompt + chosen; mask 1 on the completion tokens
    rejected: Tokenized
    source: str = ""


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PairTokenizer:
    """Tokenizes Pairs with one tokenizer; keeps the truncation counts `truncation_warning` reads."""

    def __init__(self, tokenizer, template: str = "chat", system_prompt: str | None = None,
                 max_length: int = 512, too_long: str = "truncate"):
        self.tok, self.max_length, self.too_long = tokenizer, max_length, too_long
        self.chat_template = chat_template(template) if template != "raw" else None
        self.system_prompt = system_prompt
        self.stats = {"truncated": 0, "dropped": 0, "cut_targets": 0, "targets_lost": 0, "targets": 0}

    def _ids(self, value, generation_prompt: bool = False) -> list[int]:
        if isinstance(value, str):
            return list(self.tok(text=value)["input_ids"])
        out = self.tok.apply_chat_template(list(value), tokenize=True, return_dict=True,
                                           add_generation_prompt=generation_prompt, chat_template=self.chat_template)
        return list(out["input_ids"])

    def _sides(self, pair: Pair):
        """(prompt ids, chosen ids, rejected ids) as TRL splits them."""
        prompt, chosen, rejected = pair.prompt, pair.chosen, pair.rejected
        if pair.is_chat:
            if self.system_prompt and (not prompt or prompt[0]["role"] != "system"):
                prompt = ({"role": "system", "content": self.system_prompt}, *prompt)
            prompt_ids = self._ids(prompt, generation_prompt=True)
            full_c, full_r = self._ids((*prompt, *chosen)), self._ids((*prompt, *rejected))
        else:
            eos = self.tok.eos_token
            chosen, rejected = (s if s.endswith(eos) else s + eos for s in (chosen, rejected))
            prompt_ids = self._ids(prompt)
            full_c, full_r = self._ids(prompt + chosen), self._ids(prompt + rejected)
        n = min(common_prefix_length(prompt_ids, full_c), common_prefix_length(prompt_ids, full_r))
        return prompt_ids[:n], full_c[n:], full_r[n:]

    def _sequence(self, prompt: list[int], completion: list[int], source: str) -> Tokenized | None:
        ids, mask = prompt + completion, [0] * len(prompt) + [1] * len(completion)
        self.stats["targets"] += len(completion)
        if len(ids) > self.max_length:
            if self.too_long == "error":
                raise DataError(f"example is {len(ids)} tokens, longer than data.max_length={self.max_length}",
                                where=source, fix="raise data.max_length, shorten the record, or set data.too_long: truncate")
            if self.too_long == "drop":
                return None
            self.stats["truncated"] += 1
            self.stats["cut_targets"] += 1
            self.stats["targets_lost"] += len(ids) - self.max_length
            ids, mask = ids[: self.max_length], mask[: self.max_length]
        return Tokenized(tuple(ids), tuple(mask), source)

    def encode(self, pair: Pair) -> TokenizedPair | None:
        prompt, chosen, rejected = self._sides(pair)
        if len(prompt) >= self.max_length:
            if self.too_long == "drop":
                self.stats["dropped"] += 1
                return None
            raise DataError(f"the prompt alone is {len(prompt)} tokens: data.max_length={self.max_length} leaves no "
                            "completion token", where=pair.source,
                            fix="raise data.max_length, shorten the prompt, or set data.too_long: drop (TRL drops such pairs)")
        c, r = self._sequence(prompt, chosen, pair.source), self._sequence(prompt, rejected, pair.source)
        if c is None or r is None:
            self.stats["dropped"] += 1
            return None
        return TokenizedPair(c, r, pair.source)

    def encode_all(self, pairs: list[Pair], where: str = "dataset") -> list[TokenizedPair]:
        out = [t for t in (self.encode(p) for p in pairs) if t is not None]
        self.stats["examples"] = len(pairs)
        if not out:
            raise DataError("dataset is empty after tokenization (every example was dropped)", where=where,
                            fix="raise data.max_length or check that completions are not empty")
        return out
