"""Dedup, group-aware splits and the manifest every `prepare` recipe writes.

Why groups: pairs generated from one source unit (an article, a decision, a SQuAD context) look
alike, so if they landed in both train and test the test score would measure memorisation. A
group therefore always goes whole into one split. Why a manifest: it records exactly which source
files (by hash) and which seed produced which split files (by hash), so a run can be traced back.
"""
from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from common.errors import ConfigError, DataError
from common.runs.io import relative_to, sha256_file, write_json, write_jsonl

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
DEFAULT_RATIOS = (0.8, 0.1, 0.1)


def pair_key(row: Mapping) -> str:
    """Default identity of a record: its content without `meta` (ids differ, pairs may not)."""
    return json.dumps({k: v for k, v in row.items() if k != "meta"}, ensure_ascii=False,
                      sort_keys=True)


def dedup(rows: Iterable[dict], key: Callable[[dict], Any] = pair_key) -> list[dict]:
    """Drop records whose key was already seen; the first occurrence wins (order is kept)."""
    seen: set = set()
    out = []
    for row in rows:
        k = key(row)
        if k not in seen:
            seen.add(k)
            out.append(row)
    return out


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative fractions summing to 1 (train, valid, test); "0.8,0.1,0.1" also works."""
    try:
        r = tuple(float(x) for x in (ratios.split(",") if isinstance(ratios, str) else ratios))
    except (TypeError, ValueError):
        r = ()
    if len(r) != 3 or any(x < 0 or math.isnan(x) for x in r) or abs(sum(r) - 1.0) > 1e-6:
        raise ConfigError(f"split ratios must be three non-negative numbers summing to 1, got {ratios!r}",
                          where="ratios", fix="use e.g. 0.8,0.1,0.1 (train, valid, test)")
    return r  # type: ignore[return-value]


def _group_counts(n_groups: int, ratios: tuple[float, float, float]) -> list[int]:
    """How many groups each split gets: rounded shares; every split with a non-zero ratio gets
    at least one group when there are enough groups; train takes the remainder."""
    live = [i for i, r in enumerate(ratios) if r > 0]
    floor = 1 if n_groups >= len(live) else 0
    counts = [0, 0, 0]
    for i in (1, 2):
        if ratios[i] > 0:
            counts[i] = max(floor, round(n_groups * ratios[i]))
    if ratios[0] > 0:
        counts[0] = n_groups - counts[1] - counts[2]
        while counts[0] < floor:  # rounding took too much: give it back from the larger split
            j = 1 if counts[1] >= counts[2] else 2
            counts[j] -= 1
            counts[0] += 1
    else:  # no train split: the remainder goes to the last live split
        counts[live[-1]] += n_groups - sum(counts)
    return counts


def split_by_group(rows: Sequence[dict], group_key: Callable[[dict], Any] | str,
                   ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 0) -> dict[str, list[dict]]:
    """Assign whole groups to train/valid/test, deterministically for a given seed.

    The sorted unique group ids are shuffled with `random.Random(seed)` and cut by `ratios`, so
    the result does not depend on input order of groups nor on Python's hash randomisation.
    Rows keep their input order inside each split. `group_key` is a callable or a key looked up
    in the row, then in `row["meta"]`.
    """
    r = check_ratios(ratios)
    if not rows:
        raise DataError("the dataset is empty after filtering", fix="check the inputs and the recipe options")
    if isinstance(group_key, str):
        name = group_key
        group_key = lambda row: row[name] if name in row else row["meta"][name]  # noqa: E731
    ids = [str(group_key(row)) for row in rows]
    groups = sorted(set(ids))
    random.Random(seed).shuffle(groups)
    counts = _group_counts(len(groups), r)
    where: dict[str, str] = {}
    start = 0
    for split, n in zip(SPLITS, counts):
        for g in groups[start:start + n]:
            where[g] = split
        start += n
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for gid, row in zip(ids, rows):
        out[where[gid]].append(row)
    return out


def finish(rows: list[dict], *, recipe: str, out_dir: str | Path, seed: int, sources: Sequence[Path],
           group_key: Callable[[dict], Any] | str, ratios: Sequence[float] | str = DEFAULT_RATIOS,
           extra: dict | None = None, key: Callable[[dict], Any] = pair_key) -> dict:
    """The common tail of every recipe: dedup (by `key`), split by group, write files and manifest."""
    ratios = check_ratios(ratios)
    unique = dedup(rows, key)
    extra = dict(extra or {})
    extra["duplicates_dropped"] = extra.get("duplicates_dropped", 0) + len(rows) - len(unique)
    splits = split_by_group(unique, group_key, ratios, seed)
    key = group_key if callable(group_key) else (
        lambda row: row[group_key] if group_key in row else row["meta"][group_key])
    extra["groups"] = {s: len({str(key(r)) for r in splits[s]}) for s in SPLITS}
    return write_splits(out_dir, splits, extra, recipe=recipe, seed=seed, sources=sources, ratios=ratios)


def summary_text(manifest: Mapping) -> str:
    """A few human lines for the CLI: split sizes, then every flat dict of counts in the manifest."""
    lines = [f"recipe {manifest.get('recipe')} (seed {manifest.get('seed')}): "
             + ", ".join(f"{s} {manifest['counts'][s]}" for s in SPLITS)
             + f" (duplicates dropped: {manifest.get('duplicates_dropped', 0)})"]
    for key, value in manifest.items():
        if key in ("counts", "files", "sources", "summary"):
            continue
        if isinstance(value, Mapping) and value and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
            lines.append(f"  {key}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
    return "\n".join(lines)


def write_splits(out_dir: str | Path, splits: Mapping[str, list[dict]],
                 manifest_extra: Mapping[str, Any] | None = None, *, recipe: str = "", seed: int = 0,
                 sources: Iterable[str | Path] = (), ratios: Sequence[float] | None = None) -> dict:
    """Write train/valid/test.jsonl and manifest.json (each atomically); return the manifest.

    The manifest holds no timestamp or absolute output path, so the same inputs and seed give
    byte-identical files. Empty splits are still written (as empty files) so the layout is fixed.
    Keys of `manifest_extra` are added after the standard keys and never replace them.
    """
    total = sum(len(splits.get(s, [])) for s in SPLITS)
    if total == 0:
        raise DataError("the dataset is empty after filtering: nothing to write", where=str(out_dir),
                        fix="check the inputs and the recipe options")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts, files = {}, {}
    for s in SPLITS:
        path = out_dir / f"{s}.jsonl"
        counts[s] = write_jsonl(path, splits.get(s, []))
        files[path.name] = {"rows": counts[s], "sha256": sha256_file(path)}
    manifest: dict[str, Any] = {
        "recipe": recipe,
        "seed": seed,
        "ratios": list(ratios) if ratios is not None else None,
        "counts": counts,
        "total": total,
        "files": files,
        "sources": [{"path": str(p), "path_relative": relative_to(p, out_dir), "sha256": sha256_file(p)}
                    for p in sources],
    }
    for key, value in (manifest_extra or {}).items():
        manifest.setdefault(key, value)
    manifest["summary"] = summary_text(manifest)
    write_json(out_dir / "manifest.json", manifest)
    log.info("wrote %s\n%s", out_dir, manifest["summary"])
    return manifest
