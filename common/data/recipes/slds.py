"""Swiss court decisions → headnotes (SLDS-style), in messages shape, prompts from Jinja files.

The prompts live in `templates/slds_system.jinja` and `templates/slds_user.jinja` so a user can
change the wording without touching code (options `system_template` / `user_template`); they are
rendered with StrictUndefined so a misspelt variable fails instead of vanishing. The language pair
(decision → headnote) picks the instruction, always worded in the headnote's language.

Long decisions: with `max_length` (tokens), each record's rendered system + user + headnote is
counted with `estimate_tokens` (whitespace words × 1.3, rounded up — a rough estimate, not a
tokenizer). Over the limit, only the DECISION is cut (at a word boundary, marked "[…]"): the
headnote is the training target and is never cut. Counts go to the manifest under "truncated"
and a warning is issued (`warnings` and `logging`).

No SLDS data is available offline: `synthetic_records` makes fake but plausible records for demos
and tests (`data/slds/synthetic.jsonl` holds `synthetic_records(10, 0)`).
"""
from __future__ import annotations

import json
import logging
import math
import random
import re
import uuid
import warnings
from pathlib import Path
from typing import Any

from common.data.splits import DEFAULT_RATIOS, finish
from common.errors import ConfigError, DataError
from common.runs.io import iter_jsonl
from common.data.jinja_files import load_template

log = logging.getLogger(__name__)

NAME = "slds"
HELP = ("Swiss court decisions → headnotes (SLDS-style JSONL with sample_id, decision_id, decision, "
        "decision_language, headnote, headnote_language, law_area, year). Prompts are rendered from "
        "Jinja templates (replace them with system_template / user_template); the instruction "
        "follows the language pair (de/fr/it → de/fr/it). With max_length, decisions (never "
        "headnotes) are truncated to fit. Split by decision_id.")
OPTIONS = {
    "system_template": "path of a Jinja template for the system message",
    "user_template": "path of a Jinja template for the user message",
    "max_length": "token budget for system + user + headnote; the decision is truncated to fit",
}
FIELDS = ("sample_id", "decision_id", "decision", "decision_language", "headnote", "headnote_language",
          "law_area", "year")
LANGUAGES = ("de", "fr", "it")
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
CUT_MARK = "[…]"

# (decision language, headnote language) → instruction, worded in the headnote language
INSTRUCTIONS = {
    ("de", "de"): "Fasse den folgenden deutschen Entscheid als deutsche Regeste zusammen.",
    ("fr", "de"): "Fasse den folgenden französischen Entscheid als deutsche Regeste zusammen.",
    ("it", "de"): "Fasse den folgenden italienischen Entscheid als deutsche Regeste zusammen.",
    ("de", "fr"): "Résume l'arrêt suivant, rédigé en allemand, sous la forme d'un regeste en français.",
    ("fr", "fr"): "Résume l'arrêt suivant, rédigé en français, sous la forme d'un regeste en français.",
    ("it", "fr"): "Résume l'arrêt suivant, rédigé en italien, sous la forme d'un regeste en français.",
    ("de", "it"): "Riassumi la seguente sentenza, redatta in tedesco, sotto forma di regesto in italiano.",
    ("fr", "it"): "Riassumi la seguente sentenza, redatta in francese, sotto forma di regesto in italiano.",
    ("it", "it"): "Riassumi la seguente sentenza, redatta in italiano, sotto forma di regesto in italiano.",
}


def estimate_tokens(text: str) -> int:
    """Default token count: whitespace-separated words × 1.3, rounded up (no tokenizer needed)."""
    return math.ceil(len(text.split()) * 1.3)


# ---------------------------------------------------------------- records

def check_record(obj: Any, where: str) -> dict:
    """Required fields present, texts non-empty, languages known; returns the record."""
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, found a {type(obj).__name__}", where=where,
                        fix=f"give one object per line with {', '.join(FIELDS)}")
    for name in FIELDS:
        if name not in obj or obj[name] is None:
            raise DataError(f'missing field "{name}"', where=where, fix=f"every record needs {', '.join(FIELDS)}")
    for name in ("decision", "headnote"):
        if not isinstance(obj[name], str) or not obj[name].strip():
            raise DataError(f'field "{name}" must be non-empty text', where=where, fix="fill it or drop the record")
    for name in ("decision_language", "headnote_language"):
        if obj[name] not in LANGUAGES:
            raise DataError(f'field "{name}" is {obj[name]!r}, expected one of {", ".join(LANGUAGES)}',
                            where=where, fix="use de, fr or it")
    return obj


def _cut_decision(decision: str, n_words: int) -> str:
    if n_words <= 0:
        return CUT_MARK
    ends = [m.end() for m in re.finditer(r"\S+", decision)]
    return decision[:ends[n_words - 1]] + " " + CUT_MARK


class HeadnotePrompts:
    """Renders one record to messages; fits it to `max_length` by cutting the decision."""

    def __init__(self, options: dict):
        self.system = load_template(options.get("system_template") or TEMPLATE_DIR / "slds_system.jinja", check=True)
        self.user = load_template(options.get("user_template") or TEMPLATE_DIR / "slds_user.jinja", check=True)
        self.max_length = options.get("max_length")
        if self.max_length is not None:
            try:
                self.max_length = int(self.max_length)
            except (TypeError, ValueError):
                self.max_length = 0
            if self.max_length <= 0:
                raise ConfigError(f"max_length must be a positive number of tokens, got {options['max_length']!r}",
                                  where="max_length", fix="give e.g. max_length=2048")

    def _messages(self, rec: dict, decision: str) -> list[dict]:
        variables = {k: rec[k] for k in FIELDS if k != "headnote"}
        variables["decision"] = decision
        variables["instruction"] = INSTRUCTIONS[(rec["decision_language"], rec["headnote_language"])]
        return [{"role": "system", "content": self.system.render(variables)},
                {"role": "user", "content": self.user.render(variables)},
                {"role": "assistant", "content": rec["headnote"].strip()}]

    def _tokens(self, messages: list[dict]) -> int:
        return int(estimate_tokens("\n\n".join(m["content"] for m in messages)))

    def __call__(self, rec: dict) -> tuple[list[dict] | None, int | None, bool]:
        """(messages or None if even an empty decision does not fit, tokens before cutting, cut?)"""
        decision = rec["decision"].strip()
        messages = self._messages(rec, decision)
        if self.max_length is None:
            return messages, None, False
        tokens = self._tokens(messages)
        if tokens <= self.max_length:
            return messages, tokens, False
        lo, hi = 0, len(decision.split()) - 1  # largest word count that fits, by bisection
        if self._tokens(self._messages(rec, _cut_decision(decision, 0))) > self.max_length:
            return None, tokens, True
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._tokens(self._messages(rec, _cut_decision(decision, mid))) <= self.max_length:
                lo = mid
            else:
                hi = mid - 1
        return self._messages(rec, _cut_decision(decision, lo)), tokens, True


def run(inputs: list[str], out_dir: Path, *, seed: int = 0, options: dict | None = None) -> dict:
    """Prepare SLDS records: validate, render through the templates, fit to max_length, split."""
    options = options or {}
    renderer = HeadnotePrompts(options)
    records, paths = [], []
    pairs: dict[str, int] = {}
    over, too_long, cut_ids = 0, 0, []
    for name in inputs:
        path = Path(name)
        paths.append(path)
        n = 0
        for lineno, obj in iter_jsonl(path):
            rec = check_record(obj, f"{path}:{lineno}")
            n += 1
            messages, tokens, cut = renderer(rec)
            over += cut
            if messages is None:
                too_long += 1
                log.warning("%s:%d: prompt and headnote alone exceed max_length=%s; record skipped",
                            path, lineno, renderer.max_length)
                continue
            if cut:
                cut_ids.append(rec["sample_id"])
            pair = f"{rec['decision_language']}->{rec['headnote_language']}"
            pairs[pair] = pairs.get(pair, 0) + 1
            meta = {k: rec[k] for k in FIELDS if k not in ("decision", "headnote")}
            meta.update(truncated=cut, tokens=tokens)
            records.append({"messages": messages, "meta": meta})
        if n == 0:
            raise DataError("data file has no records", where=str(path), fix=f"add records with {', '.join(FIELDS)}")
    if over:
        msg = (f"{over} of {len(records) + too_long} SLDS records exceed max_length="
               f"{renderer.max_length} tokens: {len(cut_ids)} had their decision truncated (headnotes are "
               f"never cut), {too_long} could not fit and were skipped")
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    extra = {
        "language_pairs": dict(sorted(pairs.items())),
        "truncated": {"max_length": renderer.max_length, "over_max_length": over,
                      "decisions_truncated": len(cut_ids), "skipped_too_long": too_long},
        "truncated_sample_ids": cut_ids,
    }
    return finish(records, recipe=NAME, out_dir=out_dir, seed=seed, sources=paths,
                  group_key=lambda r: r["meta"]["decision_id"],
                  ratios=options.get("ratios", DEFAULT_RATIOS), extra=extra)


# ---------------------------------------------------------------- synthetic data

SYNTHETIC = Path(__file__).resolve().parent / "fixtures" / "slds_synthetic.json"


def _synthetic_text() -> dict:
    """The court-decision fragments synthetic records are assembled from (package data): months,
    cantons, places, one decision frame per language, and per law area its docket prefix and the
    (facts, legal consideration, headnote) texts in de/fr/it."""
    return json.loads(SYNTHETIC.read_text(encoding="utf-8"))


def synthetic_records(n: int = 10, seed: int = 0) -> list[dict]:
    """`n` fake but plausible SLDS records (de/fr/it decisions, all 9 language pairs in turn).

    Every third record reuses the previous decision with another headnote language, as in SLDS
    where one decision has headnotes in several languages: it tests grouping by decision_id.
    """
    text = _synthetic_text()
    months, cantons, places = text["months"], text["cantons"], text["places"]
    frames, topics = text["frames"], text["topics"]
    rng = random.Random(seed)
    pairs = [(d, h) for d in LANGUAGES for h in LANGUAGES]
    rng.shuffle(pairs)
    out: list[dict] = []
    for i in range(n):
        if i % 3 == 2 and out:
            prev = out[-1]
            head = next(h for h in LANGUAGES if h != prev["headnote_language"])
            out.append({**prev, "sample_id": i, "headnote_language": head,
                        "headnote": topics[prev["law_area"]][1][head][2]})
            continue
        lang, head = pairs[i % len(pairs)]
        area = rng.choice(sorted(topics))
        prefix, texts = topics[area]
        year = rng.randint(2008, 2023)
        li = LANGUAGES.index(lang)
        day, month = rng.randint(1, 28), rng.randint(1, 12)
        date = f"{day}. {months[lang].split()[month - 1]} {year - 1}" if lang == "de" else \
            f"{day} {months[lang].split()[month - 1]} {year - 1}"
        fill = {"party": rng.choice(["X.________", "Y.________", "Z.________"]), "place": rng.choice(places),
                "canton": rng.choice(cantons)[li], "date": date, "since": year - rng.randint(5, 20),
                "speed": rng.randint(76, 95), "degree": rng.randint(12, 39), "costs": rng.choice([800, 1500, 3000])}
        facts, law, _ = texts[lang]
        frame, verdicts = frames[lang]
        verdict, outcome = verdicts[rng.choice(["ok", "no"])]
        decision = frame.format(date=f"{rng.randint(1, 28)}. {months[lang].split()[month - 1]} {year}"
                                if lang == "de" else f"{rng.randint(1, 28)} {months[lang].split()[month - 1]} {year}",
                                docket=f"{prefix}_{rng.randint(10, 999)}/{year}", facts=facts.format(**fill),
                                law=law, outcome=outcome.format(**fill), verdict=verdict,
                                costs=fill["costs"], party=fill["party"])
        out.append({"sample_id": i, "decision_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "decision": decision, "decision_language": lang, "headnote": texts[head][2],
                    "headnote_language": head, "law_area": area, "year": year})
    return out
