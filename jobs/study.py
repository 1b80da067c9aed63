"""The decision study: should I fine-tune at all? The base model zero-shot and k-shot prompted,
the tuned adapters on each backend (and at other LoRA ranks), all scored on the same held-out
test items with paired bootstrap 95 % intervals, plus what tuning cost and what it broke.

It drives the project's own jobs (jobs.trainer.train, jobs.evaluation.run_eval,
jobs.general_checks.run_general) and only adds the bookkeeping. Stages, each skipped when its
output is already complete, so a rerun finishes an interrupted study (as `sweep` does):

1. baseline: the base model on the test split, and on `curve_items` validation records (step 0);
2. k-shot baselines: the base model with k training examples in every prompt (`--shots`);
3. per backend: train (an unfinished run resumes from its last checkpoint), turn every
   checkpoint into an adapter and score it on the same validation records (the learning curve),
   then score the tuned adapter on the test split;
4. ranks (`--ranks`): the same training at other LoRA ranks on the first backend, each scored
   on the test split, with its training cost;
5. forgetting (`--forgetting`): every system against the base on general material
   (jobs/general_checks.py) on each backend;
6. variability: N sampled answers to a few test items per system;
7. report: study.md, study.json and three plots (jobs/study_report.py; always rewritten from the
   stage outputs).

Torch runs before MLX in one process: once MLX has loaded OpenBLAS, torch's BLAS threads fight it
for the cores (jobs/demo.py measured 5x slower torch training), not the other way round.
"""
from __future__ import annotations

import contextlib
import copy
import resource
import time
from pathlib import Path
from typing import Sequence

from common.runs.io import read_json, write_json, write_jsonl
from jobs.study_plan import BASELINE, SETTINGS, STAGE_TIMES, STUDY, Plan, plan_study, rank_system, shot_system

# ------------------------------------------------------------------ stages
def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children: on a shared machine
    wall time measures the neighbours too, CPU time only this study."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@contextlib.contextmanager
def timed(out: Path, stage: str):
    """Add the stage's wall and CPU seconds to `stage-times.json`, summed over every run of the
    study (an interrupted stage's lost work counts; a stage kept from an earlier run adds ~0)."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    try:
        yield
    finally:
        path = out / STAGE_TIMES
        times = read_json(path, STAGE_TIMES) if path.is_file() else {}
        row = times.setdefault(stage, {"wall_s": 0.0, "cpu_s": 0.0, "runs": 0})
        row["wall_s"] = round(row["wall_s"] + time.perf_counter() - wall, 1)
        row["cpu_s"] = round(row["cpu_s"] + cpu_seconds() - cpu, 1)
        row["runs"] += 1
        write_json(path, times)


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


def _train(cfg, backend: str, run_dir: Path, name: str, echo) -> None:
    """As `sweep`: a finished run is kept, an unfinished one resumes from its last checkpoint."""
    from jobs import trainer
    from common.adapters.format import META
    from common.runs.run_dir import RunDir
    if (run_dir / "adapter" / META).is_file():
        echo(f"[study] {name}: trained earlier, kept")
        return
    ckpts = RunDir(run_dir).checkpoint_dirs()
    echo(f"[study] {name}: " + (f"resuming training from {ckpts[-1].name}" if ckpts else "training"))
    cfg = copy.deepcopy(cfg)  # plan.cfg stays as planned: settings.json is compared with it
    cfg.output, cfg.name = str(run_dir), f"{cfg.name or 'study'}-{name}"
    trainer.train_in_job(cfg, backend, resume=bool(ckpts), echo=echo, again="run the same study command again: "
                         "finished stages are kept and training resumes from its last checkpoint")


def rank_config(cfg, rank: int):
    """The config at another LoRA rank, alpha scaled with it so alpha / rank (the update's scale) is the config's."""
    out = copy.deepcopy(cfg)
    out.lora.alpha = cfg.lora.alpha * rank / cfg.lora.rank
    out.lora.rank = rank
    return out


def checkpoint_adapter(run_dir: Path, ckpt: Path, out_dir: Path) -> Path:
    """A checkpoint's LoRA weights as an adapter directory (the run's adapter config and metadata,
    these weights), so the eval job can load it like any adapter."""
    from common.adapters.format import load_adapter, save_common
    from common.runs.run_dir import RunDir
    if (out_dir / "adapter_model.safetensors").is_file():
        return out_dir
    spec, _, meta = load_adapter(run_dir / "adapter")
    weights, _, state = RunDir(run_dir).load_checkpoint(ckpt)
    meta = {k: v for k, v in meta.items() if k not in ("metrics", "files")}
    save_common(out_dir, spec, weights, {**meta, "checkpoint": {"step": state["step"], "from": str(ckpt)}})
    return out_dir


def curve_points(run_dir: Path, steps: int) -> list[tuple[int, Path | None]]:
    """(step, checkpoint dir) for every kept checkpoint before the end, then (steps, None) = the adapter."""
    from common.runs.run_dir import RunDir
    points = [(int(c.name.split("-")[-1]), c) for c in RunDir(run_dir).checkpoint_dirs()]
    return [(s, c) for s, c in points if s < steps] + [(steps, None)]


def shot_prompts(plan: Plan, k: int) -> Path:
    """The test split with k training examples before every question (common.evaluation.fewshot), as JSONL."""
    from common.data.formats import load_examples
    from common.evaluation.fewshot import as_record, pick_shots, with_shots
    path = plan.out / shot_system(k) / "test-prompts.jsonl"
    if not path.is_file():
        test = load_examples(plan.cfg.data.test)
        shots = pick_shots(load_examples(plan.cfg.data.train), k, plan.seed, test)
        write_jsonl(path, [as_record(with_shots(ex, shots)) for ex in test])
    return path


def _variability(plan: Plan, system: str, backend: str, adapter: Path | None, echo) -> None:
    """N answers sampled at the plan's temperature for a seeded sample of test items."""
    from common.data.formats import load_examples
    from common.evaluation.variability import answer_spread
    from jobs.evaluation import generate_samples, sample
    path = plan.out / "variability" / f"{system}.json"
    if path.is_file():
        return
    examples, picked = sample(load_examples(plan.cfg.data.test), plan.variability_items, plan.seed)
    echo(f"[study] variability: {system}, {plan.variability_samples} answers to {len(examples)} items ({backend})")
    answers = generate_samples(backend, plan.cfg.model.path, adapter, examples, plan.max_new_tokens,
                               plan.cfg.data.template, plan.cfg.data.system_prompt, plan.temperature,
                               plan.variability_samples, plan.seed)
    rows = [{"index": i, "answers": a, **answer_spread(a)} for i, a in zip(picked, answers)]
    write_json(path, {"system": system, "backend": backend, "temperature": plan.temperature, "items": rows})


def _baselines(plan: Plan, echo) -> None:
    """The base model zero-shot on the test split and the curve's records, then k-shot prompted."""
    cfg, first = plan.cfg, plan.first
    _evaluate(plan, first, None, cfg.data.test, plan.test_items, plan.test_dir(BASELINE), "baseline test", echo)
    _evaluate(plan, first, None, cfg.data.valid, plan.curve_items, plan.out / BASELINE / "curve" / "step-000000",
              "baseline curve", echo)
    for k in plan.shots:
        _evaluate(plan, first, None, str(shot_prompts(plan, k)), plan.test_items, plan.test_dir(shot_system(k)),
                  f"{k}-shot baseline test", echo)


def _tuned_system(plan: Plan, backend: str, run_dir: Path, echo) -> None:
    """Train on one backend, score every checkpoint on the curve's records, the adapter on the test split."""
    cfg, out = plan.cfg, plan.out
    _train(cfg, backend, run_dir, backend, echo)
    for step, ckpt in curve_points(run_dir, cfg.training.steps):
        adapter = run_dir / "adapter" if ckpt is None else \
            checkpoint_adapter(run_dir, ckpt, out / backend / "checkpoint-adapters" / ckpt.name)
        _evaluate(plan, backend, adapter, cfg.data.valid, plan.curve_items,
                  out / backend / "curve" / f"step-{step:06d}", f"{backend} curve step {step}", echo)
    _evaluate(plan, backend, run_dir / "adapter", cfg.data.test, plan.test_items, plan.test_dir(f"{backend}-tuned"),
              f"{backend} tuned test", echo)


def run_study(config_path, sets: Sequence[str], backends: Sequence[str], out_dir, *, echo=print, **options) -> dict:
    """Plan, run every stage not yet done, write the report; returns the study.json content."""
    from common.runs.lock import OutputLock
    plan = plan_study(config_path, sets, backends, out_dir, **options)
    with OutputLock(plan.out):  # one study per directory: a second run would redo and overwrite the first's stages
        return _run_planned(plan, echo)


def _run_planned(plan: Plan, echo) -> dict:
    from jobs.study_report import build_report, write_report
    out, cfg = plan.out, plan.cfg
    write_json(out / SETTINGS, plan.settings())
    echo(f"[study] {out}: backends {', '.join(plan.backends)}; metrics {', '.join(plan.metrics)}; "
         f"{cfg.training.steps} steps, curve every {plan.curve_every}")
    first, tuned = plan.first, plan.tuned()
    with timed(out, "baselines"):
        _baselines(plan, echo)
    for backend in plan.backends:
        with timed(out, f"{backend}: training, curve, test"):
            _tuned_system(plan, backend, tuned[f"{backend}-tuned"], echo)
    if plan.ranks:
        with timed(out, f"{first}: other ranks"):
            for r in plan.ranks:
                name = rank_system(first, r)
                _train(rank_config(cfg, r), first, tuned[name], name, echo)
                _evaluate(plan, first, tuned[name] / "adapter", cfg.data.test, plan.test_items, plan.test_dir(name),
                          f"{name} test", echo)
    if plan.forgetting:
        from jobs.general_checks import ANSWERS, run_general
        for backend in plan.backends:
            systems = {"base": None, **{n: d / "adapter" for n, d in tuned.items() if n.startswith(f"{backend}-")}}
            with timed(out, f"forgetting ({backend})"):
                run_general(backend, cfg.model.path, systems, out / "forgetting" / backend,
                            out / "forgetting" / ANSWERS, echo=echo)
    if plan.variability_items:
        with timed(out, "variability"):
            _variability(plan, BASELINE, first, None, echo)
            for backend in plan.backends:
                _variability(plan, f"{backend}-tuned", backend, tuned[f"{backend}-tuned"] / "adapter", echo)
    report = build_report(plan)
    write_report(out, report)
    echo(report["markdown"])
    echo(f"[study] report: {out / 'study.md'}  json: {out / STUDY}  plots: {', '.join(report['plots'])}")
    return report
