"""The quality study: does fine-tuning teach? Baseline vs tuned adapters on the held-out test
split, on each backend, with learning curves and paired bootstrap 95 % intervals.

It drives the project's own jobs (jobs.trainer.train, jobs.evaluation.run_eval, the metrics
of common.metric_registry) and only adds the bookkeeping. Stages, each skipped when its output is
already complete, so a rerun finishes an interrupted study (as `sweep` does):

1. baseline: the base model on the test split, and on `curve_items` validation records (step 0);
2. per backend: train (an unfinished run resumes from its last checkpoint), turn every
   checkpoint into an adapter and score it on the same validation records (the learning curve),
   then score the tuned adapter on the test split;
3. report: study.md, study.json, study.png (always rewritten from the stage outputs).

Torch runs before MLX in one process: once MLX has loaded OpenBLAS, torch's BLAS threads fight it
for the cores (jobs/demo.py measured 5x slower torch training), not the other way round.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from common.bootstrap import LEVEL, N_BOOT, overlap, paired_bootstrap
from common.errors import ConfigError
from common.io import read_json, write_json, write_text
from common.metric_registry import Headline, study_headlines

STUDY = "study.json"
SETTINGS = "settings.json"


def order_backends(backends: Sequence[str]) -> list[str]:
    """Canonical names, torch first (see the module docstring), each once."""
    from backends import canonical
    names = list(dict.fromkeys(canonical(b) for b in backends))
    return sorted(names, key=lambda b: b == "mlx")


# ------------------------------------------------------------------ plan
@dataclass
class Plan:
    cfg: Any
    out: Path
    backends: list[str]
    metrics: list[str]
    curve_every: int
    curve_items: int
    test_items: int | None
    max_new_tokens: int
    n_boot: int
    seed: int

    def settings(self) -> dict:
        from common.config import dump_yaml
        import yaml
        return {"config": yaml.safe_load(dump_yaml(self.cfg)), "backends": self.backends, "metrics": self.metrics,
                "curve_every": self.curve_every, "curve_items": self.curve_items, "test_items": self.test_items,
                "max_new_tokens": self.max_new_tokens}


def plan_study(config_path, sets: Sequence[str], backends: Sequence[str], out_dir, *, metrics=None,
               curve_every: int | None = None, curve_items: int = 20, test_items: int | None = None,
               max_new_tokens: int = 32, n_boot: int = N_BOOT, seed: int = 0) -> Plan:
    """Check everything a study needs before any model is loaded; refuse a directory made with
    other settings (a rerun must finish the same study, not mix two)."""
    from common.config import load_config, parse_set
    from common.data.formats import load_examples
    from common.data.manifest import resolve_data
    from common.metric_registry import METRICS, default_metrics, unknown_metrics

    out = Path(out_dir)
    cfg = load_config(config_path, parse_set(list(sets)))
    cfg.data.train, cfg.data.valid = resolve_data(cfg.data.train, cfg.data.valid)
    if not cfg.data.test or not Path(cfg.data.test).is_file():
        raise ConfigError(f"a study needs a held-out test split (data.test is {cfg.data.test!r})", where="data.test",
                          fix="set data.test to a prepared test.jsonl (e.g. --set data.test=data/prepared/x/test.jsonl)")
    if not cfg.data.valid:
        raise ConfigError("a study needs a validation split for its learning curves", where="data.valid",
                          fix="set data.valid to a prepared valid.jsonl")
    if not cfg.training.steps:
        raise ConfigError("a study trains for a fixed budget of steps", where="training.steps",
                          fix="set training.steps (e.g. --set training.steps=60)")
    every = curve_every or (cfg.training.save_every if 0 < cfg.training.save_every < cfg.training.steps
                            else max(1, cfg.training.steps // 3))
    if every < 1 or every > cfg.training.steps:
        raise ConfigError(f"--curve-every {every} is outside 1..training.steps ({cfg.training.steps})",
                          where="--curve-every", fix="pick a step interval within the training budget")
    if metrics:
        unknown = unknown_metrics(metrics)
        if unknown:
            raise ConfigError(f"unknown metric(s): {', '.join(unknown)}", where="--metrics",
                              fix=f"choose among {', '.join(METRICS)}")
    metrics = list(metrics) if metrics else default_metrics(load_examples(cfg.data.test), job="study")
    if not study_headlines(metrics):
        raise ConfigError(f"none of the metrics {', '.join(metrics)} has a per-item score to bootstrap",
                          where="--metrics", fix="include squad, rouge or citations")
    # every checkpoint is kept: the learning curve scores each of them
    cfg.training.save_every, cfg.training.eval_every, cfg.training.keep_checkpoints = every, every, 0
    plan = Plan(cfg, out, order_backends(backends), metrics, every, curve_items, test_items, max_new_tokens,
                n_boot, seed)
    saved = out / SETTINGS
    if saved.is_file():
        before = read_json(saved, SETTINGS)
        now = json.loads(json.dumps(plan.settings()))
        diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if diff:
            raise ConfigError(f"this study directory was made with other settings (differs in {', '.join(diff)})",
                              where=str(out), fix="use another --output, or delete that study directory to redo it")
    return plan


# ------------------------------------------------------------------ stages
def _eval_complete(eval_dir: Path, n_items: int | None) -> bool:
    path = eval_dir / "metrics.json"
    if not (path.is_file() and (eval_dir / "predictions.jsonl").is_file()):
        return False
    return n_items is None or read_json(path, "metrics.json").get("settings", {}).get("n_items") == n_items


def _evaluate(plan: Plan, backend: str, adapter: Path | None, data: str, limit: int | None, out_dir: Path,
              label: str, echo) -> None:
    from common.data.formats import load_examples
    from jobs.evaluation import run_eval
    n = len(load_examples(data))
    n = min(n, limit) if limit else n
    if _eval_complete(out_dir, n):
        echo(f"[study] {label}: scored earlier, kept")
        return
    echo(f"[study] {label}: generating on {n} records ({backend})")
    cfg = plan.cfg
    run_eval(backend=backend, model=cfg.model.path, adapter=str(adapter) if adapter else None, data=data,
             out_dir=out_dir, metrics=plan.metrics, limit=limit, max_new_tokens=plan.max_new_tokens,
             template=cfg.data.template, system_prompt=cfg.data.system_prompt, metric_options={}, label=label,
             echo=echo, seed=plan.seed)


def _train(plan: Plan, backend: str, run_dir: Path, echo) -> None:
    """As `sweep`: a finished run is kept, an unfinished one resumes from its last checkpoint."""
    from jobs import trainer
    from common.adapter import META
    from common.runs import RunDir
    if (run_dir / "adapter" / META).is_file():
        echo(f"[study] {backend}: trained earlier, kept")
        return
    ckpts = RunDir(run_dir).checkpoint_dirs()
    echo(f"[study] {backend}: " + (f"resuming training from {ckpts[-1].name}" if ckpts else "training"))
    cfg = copy.deepcopy(plan.cfg)  # plan.cfg stays as planned: settings.json is compared with it
    cfg.output, cfg.name = str(run_dir), f"{cfg.name or 'study'}-{backend}"
    trainer.train(cfg, backend, resume=bool(ckpts), overwrite=not ckpts, echo=echo)


def checkpoint_adapter(run_dir: Path, ckpt: Path, out_dir: Path) -> Path:
    """A checkpoint's LoRA weights as an adapter directory (the run's adapter config and metadata,
    these weights), so the eval job can load it like any adapter."""
    from common.adapter import load_adapter, save_common
    from common.runs import RunDir
    if (out_dir / "adapter_model.safetensors").is_file():
        return out_dir
    spec, _, meta = load_adapter(run_dir / "adapter")
    weights, _, state = RunDir(run_dir).load_checkpoint(ckpt)
    meta = {k: v for k, v in meta.items() if k not in ("metrics", "files")}
    save_common(out_dir, spec, weights, {**meta, "checkpoint": {"step": state["step"], "from": str(ckpt)}})
    return out_dir


def curve_points(run_dir: Path, steps: int) -> list[tuple[int, Path | None]]:
    """(step, checkpoint dir) for every kept checkpoint before the end, then (steps, None) = the adapter."""
    from common.runs import RunDir
    points = [(int(c.name.split("-")[-1]), c) for c in RunDir(run_dir).checkpoint_dirs()]
    return [(s, c) for s, c in points if s < steps] + [(steps, None)]


def run_study(config_path, sets: Sequence[str], backends: Sequence[str], out_dir, *, echo=print, **options) -> dict:
    """Plan, run every stage not yet done, write the report; returns the study.json content."""
    plan = plan_study(config_path, sets, backends, out_dir, **options)
    out, cfg = plan.out, plan.cfg
    write_json(out / SETTINGS, plan.settings())
    echo(f"[study] {out}: backends {', '.join(plan.backends)}; metrics {', '.join(plan.metrics)}; "
         f"{cfg.training.steps} steps, curve every {plan.curve_every}")
    base_backend = plan.backends[0]
    _evaluate(plan, base_backend, None, cfg.data.test, plan.test_items, out / "baseline" / "test", "baseline test", echo)
    _evaluate(plan, base_backend, None, cfg.data.valid, plan.curve_items, out / "baseline" / "curve" / "step-000000",
              "baseline curve", echo)
    for backend in plan.backends:
        run_dir = out / backend / "run"
        _train(plan, backend, run_dir, echo)
        for step, ckpt in curve_points(run_dir, cfg.training.steps):
            adapter = run_dir / "adapter" if ckpt is None else \
                checkpoint_adapter(run_dir, ckpt, out / backend / "checkpoint-adapters" / ckpt.name)
            _evaluate(plan, backend, adapter, cfg.data.valid, plan.curve_items,
                      out / backend / "curve" / f"step-{step:06d}", f"{backend} curve step {step}", echo)
        _evaluate(plan, backend, run_dir / "adapter", cfg.data.test, plan.test_items, out / backend / "test",
                  f"{backend} tuned test", echo)
    report = build_report(plan)
    write_report(out, report)
    echo(report["markdown"])
    echo(f"[study] report: {out / 'study.md'}  json: {out / STUDY}  plot: {out / 'study.png'}")
    return report


# ------------------------------------------------------------------ report
def _rows(eval_dir: Path) -> list[dict]:
    from common.io import iter_jsonl
    return [row for _, row in iter_jsonl(eval_dir / "predictions.jsonl")]


def _in_subset(row: dict, subset: str | None) -> bool:
    if subset is None:
        return True
    has = bool(row.get("references"))
    return has if subset == "has_answer" else not has


def item_values(rows_by_system: dict[str, list[dict]], h: Headline) -> dict[str, list[float]]:
    """Per-item values of one headline for every system, on the items all systems scored (same
    ids, same order), restricted to its subset; None scores (e.g. no citation to check) drop the item."""
    first = next(iter(rows_by_system.values()))
    ids = [r["id"] for r in first]
    for name, rows in rows_by_system.items():
        if [r["id"] for r in rows] != ids:
            raise ConfigError(f"{name} scored other test items than {next(iter(rows_by_system))}", where=name,
                              fix="delete the study directory's eval folders and rerun")
    keep = [i for i, r in enumerate(first) if _in_subset(r, h.subset)
            and all(rows[i].get("scores", {}).get(h.key) is not None for rows in rows_by_system.values())]
    return {name: [float(rows[i]["scores"][h.key]) * h.scale for i in keep] for name, rows in rows_by_system.items()}


def _loss_curve(run_dir: Path) -> list[tuple[int, float]]:
    from common.runs import RunDir
    return [(r["step"], r["val_loss"]) for r in RunDir(run_dir).read_log() if r.get("event") == "eval"]


def _metric_curve(plan: Plan, backend: str, h: Headline) -> list[tuple[int, float, int]]:
    """(step, mean of the headline on the curve items, n items) at step 0 (baseline) and each point."""
    dirs = [(0, plan.out / "baseline" / "curve" / "step-000000")]
    dirs += sorted((int(d.name.split("-")[-1]), d) for d in (plan.out / backend / "curve").glob("step-*"))
    out = []
    for step, d in dirs:
        vals = item_values({"x": _rows(d)}, h)["x"]
        if vals:
            out.append((step, sum(vals) / len(vals), len(vals)))
    return out


def build_report(plan: Plan) -> dict:
    systems = {"baseline": _rows(plan.out / "baseline" / "test")}
    for b in plan.backends:
        systems[f"{b}-tuned"] = _rows(plan.out / b / "test")
    tuned = [f"{b}-tuned" for b in plan.backends]
    pairs = [("baseline", t) for t in tuned] + ([(tuned[0], tuned[1])] if len(tuned) == 2 else [])
    results = []
    for h in study_headlines(plan.metrics):
        vals = item_values(systems, h)
        if not next(iter(vals.values())):
            results.append({"metric": h.label, "key": h.key, "subset": h.subset, "n_items": 0})
            continue
        boot = paired_bootstrap(vals, pairs, n_boot=plan.n_boot, seed=plan.seed)
        verdict = {t: {"beats_baseline": boot["systems"][t]["lo"] > boot["systems"]["baseline"]["hi"],
                       "intervals_overlap": overlap(boot["systems"][t], boot["systems"]["baseline"])} for t in tuned}
        agree = None
        if len(tuned) == 2:
            a, b = (boot["systems"][t] for t in tuned)
            agree = a["lo"] <= b["mean"] <= a["hi"] and b["lo"] <= a["mean"] <= b["hi"]
        results.append({"metric": h.label, "key": h.key, "subset": h.subset, "n_items": boot["n_items"],
                        "systems": boot["systems"], "pairs": boot["pairs"], "verdict": verdict,
                        "backends_agree_within_intervals": agree})
    curves = {b: {"val_loss": _loss_curve(plan.out / b / "run"),
                  "metric": _metric_curve(plan, b, study_headlines(plan.metrics)[0])} for b in plan.backends}
    training = {}
    for b in plan.backends:
        p = plan.out / b / "run" / "summary.json"
        training[b] = {k: v for k, v in read_json(p, "summary.json").items()
                       if k in ("final_loss", "val_loss", "seconds", "tokens_per_s")} if p.is_file() else {}
    report = {"settings": plan.settings(), "bootstrap": {"n_boot": plan.n_boot, "seed": plan.seed, "level": LEVEL,
                                                         "method": "percentile, paired over test items"},
              "results": results, "curves": curves, "training": training,
              "examples": _examples(systems, plan)}
    report["markdown"] = markdown(report, plan)
    return report


def _examples(systems: dict[str, list[dict]], plan: Plan, k: int = 3) -> list[dict]:
    """The first k test items where a tuned answer scores above the baseline's, to show what changed."""
    h = study_headlines(plan.metrics)[0]
    base, tuned = systems["baseline"], systems[f"{plan.backends[0]}-tuned"]
    out = []
    for b, t in zip(base, tuned):
        sb, st = b.get("scores", {}).get(h.key), t.get("scores", {}).get(h.key)
        if sb is not None and st is not None and st > sb:
            out.append({"id": b["id"], "prompt": (b.get("prompt") or "")[-300:], "reference": b.get("reference"),
                        "baseline": b.get("prediction"), "tuned": t.get("prediction"), h.key: [sb, st]})
        if len(out) == k:
            break
    return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def markdown(report: dict, plan: Plan) -> str:
    from common.reports import _table
    cfg = plan.cfg
    t = cfg.training
    names = ["baseline"] + [f"{b}-tuned" for b in plan.backends]
    lines = [f"# Quality study: {cfg.name or 'study'}\n",
             f"Base model `{cfg.model.path}`; LoRA r{cfg.lora.rank} α{cfg.lora.alpha} on "
             f"{', '.join(cfg.lora.target_modules) if isinstance(cfg.lora.target_modules, list) else cfg.lora.target_modules}; "
             f"{t.steps} steps × batch {t.batch_size} × accumulation {t.grad_accumulation}, lr {t.lr:g} ({t.schedule}); "
             f"greedy decoding, max_new_tokens {plan.max_new_tokens}; template `{cfg.data.template}`.\n",
             f"Test split `{cfg.data.test}`; learning curve on {plan.curve_items} validation records. "
             f"Intervals: {LEVEL:.0%} paired percentile bootstrap over test items ({plan.n_boot} replicates, seed "
             f"{plan.seed}).\n", "## Test split\n"]
    rows = []
    for r in report["results"]:
        if not r["n_items"]:
            rows.append([r["metric"], 0] + ["n/a"] * (len(names) + len(plan.backends)) + ["no items"])
            continue
        cells = [f"{_fmt(r['systems'][n]['mean'])} [{_fmt(r['systems'][n]['lo'])}, {_fmt(r['systems'][n]['hi'])}]"
                 for n in names]
        deltas = [f"{p['delta']:+.1f} [{p['lo']:+.1f}, {p['hi']:+.1f}]" for p in r["pairs"] if p["a"] == "baseline"]
        verdict = "; ".join(f"{b}: {'beats baseline' if r['verdict'][f'{b}-tuned']['beats_baseline'] else 'no clear gain'}"
                            for b in plan.backends)
        if r["backends_agree_within_intervals"] is not None:
            verdict += "; backends " + ("agree" if r["backends_agree_within_intervals"] else "DISAGREE")
        rows.append([r["metric"], r["n_items"], *cells, *deltas, verdict])
    header = ["metric", "items", *names, *[f"Δ {b}-tuned − baseline" for b in plan.backends], "verdict"]
    lines += [_table(header, rows) + "\n",
              "\"beats baseline\" = the tuned interval lies wholly above the baseline's (non-overlapping); "
              "Δ = paired difference with its own interval; \"agree\" = each backend's mean lies inside the "
              "other's interval. SQuAD scores ×100 as the official script; ROUGE-L F and citation accuracy in %.\n"]
    lines.append("## Learning curves\n")
    crow = []
    for b in plan.backends:
        losses = dict(report["curves"][b]["val_loss"])
        for step, value, n in report["curves"][b]["metric"]:
            crow.append([b, step, f"{value:.1f}", n, f"{losses[step]:.4f}" if step in losses else ""])
    h0 = study_headlines(plan.metrics)[0]
    lines += [_table(["backend", "step", f"{h0.label} (validation items)", "items", "validation loss"], crow) + "\n",
              "Step 0 is the base model. Validation loss is on the whole validation split.\n"]
    train = report["training"]
    if train:
        lines.append("Training: " + "; ".join(
            f"{b} final train loss {v.get('final_loss', float('nan')):.4f}, validation loss "
            f"{v.get('val_loss', float('nan')):.4f}, {v.get('seconds', 0):.0f} s" for b, v in train.items() if v) + ".\n")
    if report["examples"]:
        lines.append("## What changed (test items where the tuned answer scores higher)\n")
        for ex in report["examples"]:
            lines += [f"- **{ex['id']}** reference: `{_one_line(ex['reference'])}`",
                      f"  - baseline: `{_one_line(ex['baseline'])}`", f"  - tuned ({plan.backends[0]}): `{_one_line(ex['tuned'])}`"]
        lines.append("")
    lines.append("Files: `baseline/`, `<backend>/run/` (training run), `<backend>/curve/step-N/` and `<backend>/test/` "
                 "(eval reports: metrics.json, predictions.jsonl, report.md), study.json, study.png.\n")
    return "\n".join(lines)


def _one_line(text: Any, width: int = 160) -> str:
    s = " ".join(str(text or "").split()).replace("`", "'")
    return s if len(s) <= width else s[:width] + " …"


def figure(report: dict):
    """Left: validation loss per backend; middle: the headline on the curve items by step;
    right: test-split headline per system with its interval."""
    from common import plots
    fig, (ax1, ax2, ax3) = plots.figure(14, 4.2, 3)
    for b, c in report["curves"].items():
        if c["val_loss"]:
            ax1.plot(*zip(*c["val_loss"]), marker="o", label=b)
        if c["metric"]:
            ax2.plot([s for s, _, _ in c["metric"]], [v for _, v, _ in c["metric"]], marker="o", label=b)
    head = report["results"][0]
    plots.style(ax1, xlabel="step", ylabel="validation loss (per target token)", title="validation loss")
    plots.style(ax2, xlabel="step (0 = base model)", ylabel=head["metric"], title=f"{head['metric']} on validation items",
                zero=True)
    if head.get("n_items"):
        names = list(head["systems"])
        means = [head["systems"][n]["mean"] for n in names]
        err = [[m - head["systems"][n]["lo"] for n, m in zip(names, means)],
               [head["systems"][n]["hi"] - m for n, m in zip(names, means)]]
        ax3.bar(names, means, yerr=err, capsize=6, color=["#999999"] + ["#1f77b4", "#ff7f0e"][:len(names) - 1])
        ax3.set(ylabel=head["metric"], title=f"test split, {LEVEL:.0%} bootstrap intervals (n={head['n_items']})")
    plots.style(ax3, zero=True, legend=False)
    return fig


def write_report(out: Path, report: dict) -> None:
    write_text(out / "study.md", report["markdown"])
    write_json(out / STUDY, {k: v for k, v in report.items() if k != "markdown"})
    from common import plots
    plots.save(figure(report), out / "study.png")
