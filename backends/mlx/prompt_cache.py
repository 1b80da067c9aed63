"""KV caches of answered prompts, kept while serving: a request whose prompt shares a prefix with
one answered before starts from that prefix's cache and computes only the rest, as mlx_lm.server
does (its LRUPromptCache, used here as is). Kept per set of weights (each adapter, and the bare
base), since the keys and values depend on the LoRA layers; cleared when adapters change."""
from __future__ import annotations

from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache


class Prefixes:
    def __init__(self, model, entries: int):
        self.model, self.entries = model, entries
        self.lru = LRUPromptCache(max_size=entries)

    def clear(self) -> None:
        self.lru = LRUPromptCache(max_size=self.entries)

    def start(self, weights: str, ids: list[int]) -> tuple[list, list[int]]:
        """(a cache holding the longest cached prefix of `ids`, the ids still to compute: never
        none, since the last prompt token's logits pick the first answer token)."""
        cache, rest = self.lru.fetch_nearest_cache(weights, ids)
        if cache is not None and not rest:
            if not can_trim_prompt_cache(cache):
                return make_prompt_cache(self.model), ids
            trim_prompt_cache(cache, 1)
            rest = ids[-1:]
        return (cache if cache is not None else make_prompt_cache(self.model)), rest

    def keep(self, weights: str, tokens: list[int], cache: list) -> None:
        """Keep `cache`, which holds the keys and values of exactly `tokens` (prompt + answer)."""
        self.lru.insert_cache(weights, tokens, cache)
