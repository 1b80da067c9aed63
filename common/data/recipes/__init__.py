"""`prepare` recipes: one per use case, each turning raw sources into train/valid/test JSONL.

Every recipe has the same entry point, `run(inputs, out_dir, *, seed=0, options=None) -> manifest`,
and ends in `common.data.splits.finish` (dedup, group-aware split, manifest), so the CLI treats
them alike and every prepared directory looks the same to the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from common.data.formats import SHAPE_HELP, detect_shape, to_example
from common.data.splits import DEFAULT_RATIOS, finish, pair_key
from common.errors import ConfigError, DataError, UserError
from common.runs.io import iter_jsonl, read_json

COMMON_OPTIONS = {"ratios": "train,valid,test fractions (default 0.8,0.1,0.1); groups are never split"}


@dataclass(frozen=True)
class Recipe:
    """A registered recipe: `help` is one paragraph for `twinlora prepare --help`."""

    name: str
    help: str
    run: Callable[..., dict]
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def all_options(self) -> dict[str, str]:
        return {**COMMON_OPTIONS, **self.options}


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) from a .jsonl file or a .json file holding a list; `where` is file:line."""
    if path.suffix == ".json":
        data = read_json(path, "data file")
        if not isinstance(data, list):
            raise DataError("a .json data file must hold a list of records", where=str(path),
                            fix="use JSONL (one record per line) or a JSON list")
        for i, obj in enumerate(data, 1):
            yield f"{path}:record {i}", obj
    else:
        for lineno, obj in iter_jsonl(path):
            yield f"{path}:{lineno}", obj


def run_jsonl(inputs: list[str], out_dir: Path, *, seed: int = 0, options: dict | None = None) -> dict:
    """Validate local records in any of the four shapes, dedup them, split them, write them."""
    options = options or {}
    rows: list[dict] = []
    per_file: dict[str, int] = {}
    shapes: dict[str, int] = {}
    sources = []
    for name in inputs:
        path = Path(name)
        n = 0
        for where, obj in _records(path):
            to_example(obj, where)  # raises DataError naming file:line
            shape = detect_shape(obj)
            shapes[shape] = shapes.get(shape, 0) + 1
            rows.append(obj)
            n += 1
        if n == 0:
            raise DataError("data file has no records", where=str(path), fix=f"add records: {SHAPE_HELP}")
        per_file[str(path)] = n
        sources.append(path)
    return finish(rows, recipe="jsonl", out_dir=out_dir, seed=seed, sources=sources, group_key=pair_key,
                  ratios=options.get("ratios", DEFAULT_RATIOS),
                  extra={"records_read": len(rows), "records_per_file": per_file, "shapes": shapes})


JSONL_HELP = ("Local JSONL files (or .json lists) in any of the four record shapes: text, Alpaca, "
              "prompt/completion or messages. Every record is validated (errors name file:line), "
              "identical records are dropped, and records are split at random by seed.")


def _registry() -> dict[str, Recipe]:
    from common.data.recipes import legi, legi_classify, slds, squad

    recipes = [Recipe("jsonl", JSONL_HELP, run_jsonl)]
    recipes += [Recipe(m.NAME, m.HELP, m.run, m.OPTIONS) for m in (legi, legi_classify, slds, squad)]
    return {r.name: r for r in recipes}


RECIPES: dict[str, Recipe] = _registry()


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f'unknown recipe "{name}"', where="prepare",
                          fix=f"use one of: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def run_recipe(name: str, inputs: list[str], out_dir: str | Path, seed: int = 0,
               options: dict | None = None) -> dict:
    """Check the recipe name, inputs and option names, then run it; returns the manifest
    (its "summary" entry is the text to print)."""
    recipe = get_recipe(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(recipe.all_options))
    if unknown:
        raise ConfigError(f"unknown option(s) for recipe {name}: {', '.join(unknown)}", where="prepare",
                          fix=f"valid options: {', '.join(sorted(recipe.all_options))}")
    if not inputs:
        raise UserError(f"recipe {name} needs at least one input", where="prepare",
                        fix="give input files (or, for legi, code ids such as LEGITEXT000031366350)")
    from common.runs.io import atomic_dir
    from common.runs.ownership import check_output_dir
    check_output_dir(out_dir, "prepared", "--out", inputs=[i for i in inputs if Path(i).exists()])
    # every file goes into a temporary directory renamed once: a failure leaves the old set whole
    with atomic_dir(out_dir) as tmp:
        return recipe.run([str(i) for i in inputs], tmp, seed=seed, options=options)
