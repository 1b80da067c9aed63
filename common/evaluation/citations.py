"""French legal article numbers in free text, reduced to one canonical form.

Why: a model may write `Art. L. 3121-27`, `article L3121-27` or `L.3121-27` for the same
article; citation metrics must compare numbers, not spellings. Canonical form = the code
prefix in capitals glued to the number, no dots, spaces or `*`: `L3121-27`, `R4511-1`, `12`.
Assumed in the canonical form (and why it is lossy on purpose):
- `R*211-1` becomes `R211-1` (models rarely write the star; legi-data `num` keeps it);
- `1er` becomes `1`;
- a range `articles L. 100-1 à L. 100-3` yields its two ends only (no expansion);
- a prefixed number (`L. 100-1`) counts anywhere, but needs a hyphen (`L 1` is too ambiguous);
  a bare number (`12`) counts only after `article(s)` / `art.`, alone or in a list joined by
  `,`, `et`, `ou`, `à`, `and`, `or`.
"""
from __future__ import annotations

import re
import unicodedata

_PREFIX = r"(?<!\w)(?-i:LO|L|R|D|A)"  # capitals only: "a 2-1" is not an article
# A prefixed article number: "L3121-27", "L. 3121-27", "R.*4511-1", "D 123-4".
_PREFIXED = re.compile(
    rf"({_PREFIX})\s*\.?\s*\*?\s*(\d+(?:-\d+)+)", re.IGNORECASE)
_ITEM = rf"(?:{_PREFIX}\s*\.?\s*\*?\s*)?\d+(?:-\d+)*(?:er)?(?![\d°])"
_SEP = r"\s*(?:,|\bet\b|\bou\b|\bà\b|\band\b|\bor\b)\s*"
# "article 12", "articles 12, 13 et L. 100-2", "Art. L. 100-1".
_KEYWORD_LIST = re.compile(rf"(?:\barticles?|\bart\.)\s*({_ITEM}(?:{_SEP}{_ITEM})*)", re.IGNORECASE)
_LIST_ITEM = re.compile(rf"(?:({_PREFIX})\s*\.?\s*\*?\s*)?(\d+(?:-\d+)*)(?:er)?(?![\d°])",
                        re.IGNORECASE)


def canonical_article(num: str) -> str:
    """`"L. 3121-27"` -> `"L3121-27"`; also for legi-data `num` values (`"R*211-1"` -> `"R211-1"`)."""
    text = unicodedata.normalize("NFKC", num).strip()
    text = re.sub(r"[\s.*]", "", text)
    text = re.sub(r"(?<=\d)er$", "", text, flags=re.IGNORECASE)
    m = re.fullmatch(r"([A-Za-z]*)(.*)", text)
    return m.group(1).upper() + m.group(2)


def extract_citations(text: str) -> set[str]:
    """All article numbers cited in `text`, in canonical form (empty set if none)."""
    if not text:
        return set()
    text = unicodedata.normalize("NFKC", text)
    found = {canonical_article(p + n) for p, n in _PREFIXED.findall(text)}
    for m in _KEYWORD_LIST.finditer(text):
        for prefix, number in _LIST_ITEM.findall(m.group(1)):
            found.add(canonical_article((prefix or "") + number))
    return found



# The opening every legi reference answer has (common/data/legi templates): the heading "Article
# L100-1 du Code des relations entre le public et l'administration" and a connector into the body
# that says the question type (". Il figure …", ", en substance …", " : « …", " — emplacement …").
# The SFT model learns the heading within 10 steps; its own answers then go on otherwise (" : - L'article
# L100-1 du Code …", repeating the heading), which is what DPO with chosen = the reference teaches away.
_PREFIX_OPEN = r"(?:(?-i:LO|L|R|D|A)\s*\.?\s*\*?\s*)?"
_OPENING = re.compile(rf"\s*Article\s+({_PREFIX_OPEN}\d+(?:-\d+)*)(?:er)?\s+du\s+Code\b")
_HEADING_BODY = re.compile(r"[^.,:;—«\n]*?\s*([.,:;—]\s*(?:«|\w+))")


def opening_article(text: str) -> str | None:
    """The article an answer opens with in the heading form (`Article <num> du Code …`), in
    canonical form; None when the answer opens otherwise."""
    m = _OPENING.match(unicodedata.normalize("NFKC", text or ""))
    return canonical_article(m.group(1)) if m else None


def reference_opening(text: str) -> str | None:
    """The heading and the connector word a reference opens with, whitespace collapsed
    (`"Article L100-1 du Code … . Il"`), or None when it does not open with the heading."""
    text = " ".join(unicodedata.normalize("NFKC", text or "").split())
    m = _OPENING.match(text)
    tail = _HEADING_BODY.match(text, m.end()) if m else None
    return text[: tail.end()] if tail else None


def opens_like(answer: str, opening: str) -> bool:
    """The answer opens with `opening` (whitespace collapsed on both sides)."""
    return " ".join(unicodedata.normalize("NFKC", answer or "").split()).startswith(opening)


def repeats_heading(text: str) -> bool:
    """The answer opens with the heading and cites that article again after it (`Article L100-1 du
    Code … : - L'article L100-1 du Code …`): the SFT model's habit on legi, which its references lack."""
    text = unicodedata.normalize("NFKC", text or "")
    m = _OPENING.match(text)
    if not m:
        return False
    head = canonical_article(m.group(1))
    return any(canonical_article(p + n) == head for p, n in _PREFIXED.findall(text[m.end():]))
