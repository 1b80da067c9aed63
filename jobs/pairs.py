"""`prepare pairs`: preference pairs from an SFT split, so DPO can follow SFT.

chosen = the split's reference answer, rejected = the model's own greedy answer (the base, or
`--option adapter=DIR`): DPO then moves the model away from what it says now, toward the
reference. Items where the two coincide are skipped (nothing to prefer). The pairs keep the
conversation as chat messages, so the chat template of the SFT run applies to them.

Input: a `prepare` manifest.json (or its folder): each of its splits becomes the same split of
pairs; or JSONL files: the first becomes train, a second valid, a third test.
"""
from __future__ import annotations

from pathlib import Path

from common.data.formats import load_examples
from common.data.manifest import load_manifest, resolve_folder, resolve_split, is_manifest
from common.data.splits import SPLITS, write_splits
from common.errors import ConfigError, DataError

OPTIONS = {"model": "base model (default: the one the adapter records, else embedded)",
           "adapter": "answer with this adapter (e.g. the SFT run's adapter/) instead of the base",
           "backend": "mlx or torch (default torch)", "max_new_tokens": "answer budget (default 128)",
           "limit": "at most this many items per split (default all)"}


def split_files(inputs: list[str]) -> dict[str, Path]:
    """split name → SFT file, from a manifest (or its folder) or from up to three JSONL files."""
    if len(inputs) == 1:
        first, _ = resolve_folder(inputs[0], None)
        if first and is_manifest(first):
            m = load_manifest(first)
            return {s: p for s in SPLITS if (p := resolve_split(m, s, required=False)) is not None}
    if len(inputs) > len(SPLITS):
        raise ConfigError(f"prepare pairs takes at most {len(SPLITS)} JSONL files (train, valid, test)", where="prepare",
                          fix="give a prepare manifest.json, or the train (and valid, test) files")
    return dict(zip(SPLITS, map(Path, inputs)))


def run_pairs(inputs: list[str], out_dir: Path, seed: int = 0, options: dict | None = None, echo=print) -> dict:
    """Generate, pair and write train/valid/test.jsonl + manifest.json (atomically, as every recipe)."""
    from common.runs.io import atomic_dir
    from common.runs.ownership import check_output_dir
    from jobs.evaluation import generate_items, resolve_prompting
    from jobs.session import open_model

    options = pair_options(options or {})
    if not inputs:
        raise DataError("recipe pairs needs an SFT split", where="prepare",
                        fix="give a prepare manifest.json (e.g. data/prepared/legi/manifest.json) or JSONL files")
    files = split_files(inputs)
    check_output_dir(out_dir, "prepared", "--out", inputs=[str(p) for p in files.values()])
    adapter = options.get("adapter")
    opened = open_model(str(options.get("backend", "torch")), _model(options), adapter=adapter)
    template, system, _ = resolve_prompting(opened, None, None)
    splits, skipped = {}, {}
    for split, path in files.items():
        examples = [ex for ex in load_examples(path) if ex.is_chat][:options["limit"]]
        items = generate_items(opened, examples, template, system, options["max_new_tokens"], echo=echo)
        splits[split], skipped[split] = pair_rows(examples, [it["prediction"] for it in items])
    extra = {"pairs": {"answered_by": adapter or "base", "skipped_same_answer": skipped}}
    with atomic_dir(out_dir) as tmp:
        return write_splits(tmp, splits, extra, recipe="pairs", seed=seed, sources=list(files.values()))


COUNTS = {"limit": "e.g. --option limit=200, or omit it for every item",
          "max_new_tokens": "e.g. --option max_new_tokens=128 (a budget past the model's context is capped to it)"}


def pair_options(options: dict) -> dict:
    """The recipe's options with their defaults, checked before any model loads: known names, and
    the counts whole numbers of at least 1 (a limit above the split's size takes every item)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) for recipe pairs: {', '.join(unknown)}", where="prepare",
                          fix=f"valid options: {', '.join(sorted(OPTIONS))}")
    out = {"limit": None, "max_new_tokens": 128, **options}
    for key, fix in COUNTS.items():
        value = out[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key} must be a whole number of at least 1, got {value!r}",
                              where=f"prepare pairs --option {key}", fix=fix)
    return out


def pair_rows(examples: list, predictions: list[str]) -> tuple[list[dict], int]:
    """{"prompt": messages, "chosen": [reference], "rejected": [prediction]} per item whose
    prediction differs from the reference (whitespace ignored); returns (rows, skipped)."""
    rows, skipped = [], 0
    for ex, pred in zip(examples, predictions):
        if " ".join(pred.split()) == " ".join(ex.completion.split()) or not pred.strip():
            skipped += 1
            continue
        rows.append({"prompt": [dict(m) for m in ex.messages[:-1]],
                     "chosen": [{"role": "assistant", "content": ex.completion}],
                     "rejected": [{"role": "assistant", "content": pred.strip()}]})
    return rows, skipped


def _model(options: dict) -> str:
    """--option model, else the base the adapter records, else the embedded model."""
    if options.get("model"):
        return str(options["model"])
    if options.get("adapter"):
        from common.adapters.format import load_adapter
        _, _, meta = load_adapter(Path(options["adapter"]))
        name = ((meta or {}).get("base_model") or {}).get("path") or ((meta or {}).get("base_model") or {}).get("name")
        if name:
            return str(name)
    return "embedded"
