"""The sweep job: train a grid of configs one after the other, evaluate each on the validation
split, and put them side by side (sweep.md, sweep.csv, sweep.png).

The grid is the cartesian product of the `--set KEY=V1,V2,...` lists that hold more than one value
(a single value is a fixed override applied to every run and not part of the names). Each run
lives in `out_dir/<name>` where the name joins the swept values, e.g. `rank-8_lr-1e-4`.

Restarting an interrupted sweep does only the missing work:
- a run is finished when its `adapter/twinlora.json` exists: it is skipped (not trained again);
- an unfinished run directory with a checkpoint is resumed from its last checkpoint with the
  semantics of `train --resume` (exact: optimizer moments and data position are restored);
- an unfinished run directory without a checkpoint is restarted from scratch (`--overwrite`);
- the generation metrics of a run are computed again only when its `eval/metrics.json` is missing
  or was made with other metrics / another number of records.
A run directory whose saved config.yaml differs from the config the grid asks for is refused
rather than silently reused.
"""
from __future__ import annotations

import csv
import io
import itertools
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from common.errors import ConfigError
from common.runs.io import read_json, write_bytes, write_json, write_text
from jobs.defaults import MAX_NEW_TOKENS

SHORT = {"training.lr": "lr", "training.steps": "steps", "lora.rank": "rank", "lora.alpha": "alpha"}
EVAL_DIR = "eval"


def _split_values(raw: str) -> list[str]:
    """Split on commas that are not inside [...], {...} or quotes (so lists stay one value)."""
    out, depth, quote, cur = [], 0, None, ""
    for ch in raw:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    return out


def parse_grid(sets: Sequence[str]) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(swept axes as (key, raw values), fixed overrides as KEY=VALUE strings)."""
    axes, fixed, seen = [], [], set()
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE[,VALUE...]", where="--set",
                              fix="write e.g. --set lora.rank=8,16,32")
        key, raw = (s.strip() for s in item.split("=", 1))
        if key in seen:
            raise ConfigError(f"--set {key} is given twice", where="--set",
                              fix="give each key once with a comma list of values")
        seen.add(key)
        values = _split_values(raw)
        if any(v == "" for v in values):
            raise ConfigError(f"--set {item!r} has an empty value", where="--set", fix="remove the extra comma")
        if len(values) > 1:
            axes.append((key, values))
        else:
            fixed.append(f"{key}={values[0]}")
    return axes, fixed


def _label(key: str, keys: Sequence[str]) -> str:
    short = SHORT.get(key, key.rsplit(".", 1)[-1])
    clash = [k for k in keys if k != key and SHORT.get(k, k.rsplit(".", 1)[-1]) == short]
    return key.replace(".", "-") if clash else short


def _slug(raw: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]+", "-", raw).strip("-") or "x"


def grid_points(axes: list[tuple[str, list[str]]]) -> list[tuple[str, dict[str, str]]]:
    """[(run name, {key: raw value})] in product order (the last axis changes fastest)."""
    keys = [k for k, _ in axes]
    points = []
    for combo in itertools.product(*[v for _, v in axes]):
        values = dict(zip(keys, combo))
        name = "_".join(f"{_label(k, keys)}-{_slug(v)}" for k, v in values.items()) or "run"
        points.append((name, values))
    names = [n for n, _ in points]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"two grid points get the same run name {dup!r}", where="--set",
                          fix="give values that differ in letters/digits (e.g. not 1e-4 and 0.0001)")
    return points


def _saved_config(run_dir: Path) -> dict | None:
    path = run_dir / "config.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None


def _flat(d: dict) -> dict:
    return {f"{s}.{k}" if isinstance(v, dict) else s: (x if isinstance(v, dict) else v)
            for s, v in d.items() for k, x in (v.items() if isinstance(v, dict) else [(None, None)])}


def _check_same_config(run_dir: Path, cfg) -> None:
    from common.config.schema import dump_yaml
    saved = _saved_config(run_dir)
    if saved is None:
        return
    a, b = _flat(saved), _flat(yaml.safe_load(dump_yaml(cfg)))
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        raise ConfigError(f"this run directory was made with another config (differs in {', '.join(diff)})",
                          where=str(run_dir), fix="use another --output, or delete that run directory to redo it")


def _finished(run_dir: Path) -> bool:
    from common.adapters.format import META
    return (run_dir / "adapter" / META).is_file()


def _summary(run_dir: Path) -> dict:
    if (run_dir / "summary.json").is_file():
        return read_json(run_dir / "summary.json", "summary.json")
    # Killed between writing the adapter and summary.json: the adapter metadata holds the same.
    return _summary_meta(run_dir).get("metrics", {})


def _summary_meta(run_dir: Path) -> dict:
    from common.adapters.format import META
    return read_json(run_dir / "adapter" / META, "twinlora.json")


def _eval_done(eval_dir: Path, metrics: list[str] | None, n_items: int) -> bool:
    path = eval_dir / "metrics.json"
    if not path.is_file():
        return False
    data = read_json(path, "metrics.json")
    got = data.get("metrics", {})
    return (metrics is None or list(got.get("metrics") or []) == list(metrics)) \
        and data.get("settings", {}).get("n_items") == n_items


def _value(cfg, key: str) -> Any:
    """The resolved (typed) value of a dotted key, e.g. 1e-4 as 0.0001, not the string "1e-4"."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _metric_columns(scores: dict) -> dict[str, Any]:
    from common.evaluation.registry import headline_keys
    return {k: scores.get(k) for k in headline_keys(scores.get("metrics") or [])}


def _print(msg: str = "", nl: bool = True) -> None:
    print(msg, end="\n" if nl else "", flush=True)


def run_sweep(config_path: str | Path | None, sets: Sequence[str], backend: str, out_dir: str | Path,
              metrics: list[str] | None = None, limit_eval: int | None = None, echo=_print,
              max_new_tokens: int = MAX_NEW_TOKENS["sweep"]) -> list[dict]:
    """Train, evaluate and tabulate every grid point; return one row dict per run.

    `metrics`: None = validation loss only; a list of metric names (common.evaluation.registry) = also
    generate on the first `limit_eval` validation records and score them; ["auto"] = the recipe's
    default metrics (common.evaluation.registry.default_metrics).
    """
    out_dir = Path(out_dir)
    axes, fixed = parse_grid(sets)
    points = grid_points(axes)
    auto = metrics is not None and list(metrics) == ["auto"]
    if metrics is not None and not auto:
        _check_metrics(metrics)
    configs = _configs(config_path, points, fixed, out_dir, metrics)
    write_json(out_dir / "sweep.json", {"config": str(config_path) if config_path else None, "backend": backend,
                                        "axes": {k: v for k, v in axes}, "fixed": fixed,
                                        "metrics": metrics, "limit": limit_eval,
                                        "runs": [n for n, _ in points]})
    echo(f"[sweep] {len(points)} runs: " + ", ".join(n for n, _ in points))
    rows = []
    for i, (name, values, cfg) in enumerate(configs, 1):
        run_dir = out_dir / name
        head = f"[sweep] {i}/{len(configs)} {name}"
        _train_point(run_dir, cfg, backend, head, echo)
        summary = _summary(run_dir)
        row = {"run": name, **{k: _value(cfg, k) for k in values},
               "final_loss": summary.get("final_loss"), "val_loss": summary.get("val_loss")}
        if metrics is not None:
            wanted = None if auto else list(metrics)
            row.update(_metric_columns(_scores(run_dir, cfg, backend, wanted, limit_eval, max_new_tokens, head, echo)))
        row["seconds"] = summary.get("seconds")
        rows.append(row)
    md, _ = write_table(rows, out_dir, [k for k, _ in axes])
    write_bytes(out_dir / "sweep.png", plot(rows, out_dir))
    echo(md)
    echo(f"[sweep] table: {out_dir / 'sweep.md'}  csv: {out_dir / 'sweep.csv'}  plot: {out_dir / 'sweep.png'}")
    return rows


def _check_metrics(metrics: list[str]) -> None:
    """Unknown metric names fail before anything is trained."""
    from common.evaluation.registry import METRICS, unknown_metrics
    unknown = unknown_metrics(metrics)
    if unknown:
        raise ConfigError(f"unknown metric(s): {', '.join(unknown)}", where="--metrics",
                          fix=f"choose among {', '.join(METRICS)}, or auto")


def _configs(config_path, points: list, fixed: list[str], out_dir: Path, metrics) -> list[tuple[str, dict, Any]]:
    """(name, swept values, resolved config) per grid point; every config is validated before
    anything is trained, so a bad grid point fails the sweep at once."""
    from common.config.schema import load_config, parse_set
    from common.data.manifest import resolve_data
    configs = []
    for name, values in points:
        over = parse_set(fixed + [f"{k}={v}" for k, v in values.items()])
        over["output"], over["name"] = str(out_dir / name), name
        cfg = load_config(config_path, over)
        # as the trainer does (and saves in config.yaml): a manifest.json names the train/valid files
        cfg.data.train, cfg.data.valid = resolve_data(cfg.data.train, cfg.data.valid)
        if metrics is not None and not cfg.data.valid:
            raise ConfigError("--metrics needs a validation split", where="data.valid",
                              fix="set data.valid in the config (or --set data.valid=...), or drop --metrics")
        configs.append((name, values, cfg))
    return configs


def _train_point(run_dir: Path, cfg, backend: str, head: str, echo) -> None:
    """Skip a finished run (made with this backend), resume one with a checkpoint, else train from scratch."""
    from backends import canonical
    from common.runs.run_dir import RunDir
    from jobs import trainer
    _check_same_config(run_dir, cfg)
    if _finished(run_dir):
        made_with = _summary_meta(run_dir).get("backend")
        if made_with and made_with != canonical(backend):
            raise ConfigError(f"this run was trained with --backend {made_with}", where=str(run_dir),
                              fix=f"rerun with --backend {made_with}, or use another --output")
        echo(f"{head}: finished earlier, skipped")
        return
    ckpts = RunDir(run_dir).checkpoint_dirs()
    if ckpts:
        echo(f"{head}: resuming from {ckpts[-1].name}")
    elif run_dir.exists():
        echo(f"{head}: unfinished and no checkpoint, restarting")
    else:
        echo(f"{head}: training")
    trainer.train_in_job(cfg, backend, resume=bool(ckpts), echo=echo, again="run the same sweep command again: "
                         "finished runs are kept and this one resumes from its last checkpoint")


def _scores(run_dir: Path, cfg, backend: str, wanted: list[str] | None, limit_eval: int | None,
            max_new_tokens: int, head: str, echo) -> dict:
    """The run's generation metrics: kept from eval/ when made with these metrics on these records,
    else generated and scored again."""
    from common.data.formats import load_examples
    from jobs.evaluation import run_eval
    eval_dir = run_dir / EVAL_DIR
    n = len(load_examples(cfg.data.valid)[:limit_eval] if limit_eval else load_examples(cfg.data.valid))
    if _eval_done(eval_dir, wanted, n):
        echo(f"{head}: metrics computed earlier, kept")
        return read_json(eval_dir / "metrics.json", "metrics.json")["metrics"]
    echo(f"{head}: generating on {n} validation records")
    return run_eval(backend=backend, model=cfg.model.path, adapter=str(run_dir / "adapter"),
                    data=cfg.data.valid, out_dir=eval_dir, metrics=wanted, limit=limit_eval,
                    max_new_tokens=max_new_tokens, template=cfg.data.template,
                    system_prompt=cfg.data.system_prompt, metric_options={}, label=run_dir.name, echo=echo)


def _columns(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


def write_table(rows: list[dict], out_dir: Path, swept: list[str]) -> tuple[str, str]:
    """sweep.md (with the best run by validation loss) and sweep.csv; one row per run."""
    from common.evaluation.reports import _table
    cols = _columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    writer.writerows([["" if r.get(c) is None else r.get(c) for c in cols] for r in rows])
    md = f"## Sweep ({len(rows)} runs; swept: {', '.join(swept) or 'nothing'})\n\n"
    shown = [[format(r[c], "g") if c in swept and isinstance(r.get(c), float) else r.get(c) for c in cols]
             for r in rows]  # 2e-05, not the 4-decimal rounding of other floats
    md += _table(cols, shown) + "\n"
    scored = [r for r in rows if isinstance(r.get("val_loss"), (int, float))]
    if scored:
        best = min(scored, key=lambda r: r["val_loss"])
        md += f"\nLowest validation loss: `{best['run']}` ({best['val_loss']:.4f}).\n"
    md += ("\n`final_loss` = training loss of the last step, `val_loss` = loss on the whole validation "
           "split after training (both mean per target token); metric columns are on the first "
           "validation records; `seconds` = the training loop's time (of its last attempt when resumed).\n")
    write_text(out_dir / "sweep.md", md)
    write_text(out_dir / "sweep.csv", buf.getvalue())
    return md, buf.getvalue()


def plot(rows: list[dict], out_dir: Path) -> bytes:
    """sweep.png: `figure` rendered."""
    from common.evaluation import plots
    return plots.png(figure(rows, out_dir))


def figure(rows: list[dict], out_dir: Path):
    """Left: the training-loss curves overlaid; right: final train and validation loss per run.
    Both y axes start at zero (a zoomed axis makes a 1% difference look like a factor of two);
    the bars carry their values so small differences stay readable."""
    from common.evaluation import plots
    from common.runs.run_dir import RunDir
    fig, (left, right) = plots.figure(12, 4.5, 2)
    for r in rows:
        curve = [(x["step"], x["loss"]) for x in RunDir(out_dir / r["run"]).read_log() if x.get("event") == "train"]
        if curve:
            left.plot(*zip(*curve), label=r["run"])
    plots.style(left, xlabel="step", ylabel="training loss (mean per target token)", zero=True)
    xs = range(len(rows))
    for j, (key, label) in enumerate((("final_loss", "final train loss"), ("val_loss", "validation loss"))):
        bars = right.bar([x + (j - 0.5) * 0.4 for x in xs], [r.get(key) or 0 for r in rows], 0.4, label=label)
        right.bar_label(bars, labels=[f"{r[key]:.3f}" if isinstance(r.get(key), (int, float)) else ""
                                      for r in rows], fontsize=6, padding=2)
    right.set_xticks(list(xs))
    right.set_xticklabels([r["run"] for r in rows], rotation=30, ha="right", fontsize=7)
    plots.style(right, ylabel="loss", zero=True)
    return fig
