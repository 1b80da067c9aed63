"""The training job, written once for both backends, in four stages a reader follows top to bottom:

    setup   (jobs/train_setup.py) what the backend cannot do refused, the data, the run length,
            the run directory, a resume checked: all before the model loads
    build   the backend with the base model, the adapter spec, the LoRA weights (fresh, --init-adapter
            or resumed) and the optimizer
    fit     the step loop (jobs/fit.py), reporting through callbacks (jobs/callbacks.py): log,
            progress, trackers, validation, checkpoints; Ctrl-C and SIGTERM save the progress
    finish  the final validation and checkpoint, the adapter, summary.json, the plot and README

The loop owns everything that must be identical on MLX and PyTorch: the batches (common.training.batching),
the token-weighted loss over micro-batches, the schedule (common.training.schedule), clipping, the LoRA
init (drawn in numpy), checkpoints with optimizer moments and data position (exact resume),
NaN detection and Ctrl-C handling. A backend only runs forward/backward and the AdamW step.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backends import canonical, get_backend
from backends.base import Backend
from common.adapters.format import (AdapterSpec, block_relative, check_shapes, expected_shapes, init_lora_weights,
                            load_adapter, mlx_keys, modules_for_adapter, spec_from_config)
from common.training.batching import iterate_batches
from common.config.schema import Config, dump_yaml
from common.errors import TrainingError
from common.runs.io import real_path, relative_to, replace_dir, write_json, write_text
from common.runs.lock import RunLock
from common.models.resolve import peft_base_name, weights_hash
from common.models.quantize import resolved_name
from common.config.resume import check_init_adapter
from common.runs.run_dir import RunDir, plan_run
from common.runs.signals import interrupt_name, terminate_as_interrupt
from common.training.tokenize import truncation_warning
from common.runs.tracking import Trackers
from jobs import damage
from jobs.callbacks import Checkpoints, Meter, Outputs, Validation, diverged, step_delay
from jobs.distributed import from_env
from jobs.fit import Diverged, FitState, StepRule, fit
from jobs.reference import check_reference, reference_of, set_objective
from jobs.train_setup import TrainingPlan, TrainRequest, length_note, setup, written_by
from jobs.validation import BestTracker


def train(cfg: Config, backend: str, *, overwrite: bool = False, resume: bool = False,
          init_adapter: str | None = None, dry_run: bool = False, echo=print, dist=None) -> dict:
    """Train one run. The output is checked before any work (`common.runs.run_dir.plan_run`: only our runs
    are resumed or replaced; `--overwrite` builds the new run beside the old and swaps at the end),
    held with a lock for the whole run (`common.runs.lock`), and SIGTERM saves progress like Ctrl-C."""
    get_backend(backend)
    request = TrainRequest(cfg=cfg, backend=backend, overwrite=overwrite, resume=resume, init_adapter=init_adapter,
                           dry_run=dry_run, echo=echo, dist=dist or from_env(canonical(backend), cfg.training))
    if dry_run:
        return run_stages(request, run_dir=Path(cfg.output))
    work, staged = plan_run(cfg.output, overwrite, resume)
    final = Path(os.path.normpath(real_path(cfg.output).absolute()))  # "." or "a/.." can be swapped too; a link's target
    if not request.dist.is_main:
        return run_stages(request, run_dir=work)
    with RunLock(final), terminate_as_interrupt():
        summary = run_stages(request, run_dir=work)
        if staged:
            replace_dir(work, final)  # the previous run (ours) goes only now that the new one is complete
            echo(f"[twinlora] the new run replaced the previous one in {final}")
    return summary


class Interrupted(TrainingError):
    """Ctrl-C or SIGTERM stopped training; its fix says how to continue."""


def train_in_job(cfg: Config, backend: str, *, resume: bool, again: str, echo=print) -> dict:
    """`train` for a job that resumes its own runs (study, sweep): those have no `--resume`, so an
    interruption tells the user to run the job again (`again`) instead."""
    try:
        return train(cfg, backend, resume=resume, overwrite=not resume, echo=echo)
    except Interrupted as exc:
        raise Interrupted(exc.what, where=exc.where, fix=again) from None


def run_stages(request: TrainRequest, run_dir: Path) -> dict:
    """setup → build → fit → finish, in `run_dir` (the run's directory, or its staging twin)."""
    plan = setup(request, run_dir)
    loaded = build(plan)
    report = start_reporting(plan, loaded)
    fit_run(plan, loaded, report)
    return finish(plan, loaded, report)


# ------------------------------------------------------------------ build
@dataclass(kw_only=True)
class LoadedRun:
    """What build made: the backend holding the base and the adapter, and where the run starts
    and ends (not a model: the loaded backend plus the run's step range and resumed state)."""
    backend: Backend
    spec: AdapterSpec
    modules: dict                # adapted module path → (out, in)
    trainable_params: int
    start: int                   # the first step to run (> 0 when resumed)
    end: int                     # the last step: the run's steps, or where early stopping ended it
    state: dict                  # the resumed checkpoint's trainer state ({} for a new run)
    tracker: BestTracker
    damage: dict | None = None   # the quantized base against the float base (jobs/damage.py)

    @property
    def collective(self) -> bool:
        """FSDP: the weights live in shards, forward passes and weight reads involve every rank."""
        return self.backend.sharded


def build(plan: TrainingPlan) -> LoadedRun:
    """Stage 2: the base model on the backend, the adapter spec, the LoRA weights (drawn in numpy,
    from --init-adapter or from the last checkpoint), data parallelism and the optimizer."""
    cfg, t, run = plan.cfg, plan.cfg.training, plan.run
    measuring = bool(cfg.model.quantize) and not plan.dry_run and plan.dist.is_main
    source, ids = damage.damage_ids(plan.valid_data, plan.train_data) if measuring else ("", [])
    be = plan.backend_class(plan.model_dir, dtype=cfg.model.dtype, quantize=cfg.model.quantize,
                         grad_checkpointing=t.grad_checkpointing, attn_implementation=cfg.model.attn_implementation,
                         fsdp=t.parallel == "fsdp" and plan.dist.world_size > 1)
    reference = damage.float_logits(plan.backend_class, plan.model_dir, cfg.model.dtype, ids) if ids else None
    lost = damage.measure(be, reference, ids, be.scheme, cfg.model.dtype, source) if ids else None
    spec, modules = spec_from_config(cfg.lora, be.linear_modules(), be.num_hidden_layers(),
                                     peft_base_name(cfg.model.path, plan.model_dir))
    weights = init_lora_weights(spec, modules, t.seed)
    if plan.init_adapter:
        spec_i, weights, _ = load_adapter(Path(plan.init_adapter))
        check_init_adapter(spec_i, spec, plan.init_adapter)
        modules_for_adapter(spec_i, weights, {p: modules[p] for p in modules}, plan.init_adapter)
    starting = weights   # the reference of an objective that has one, when --init-adapter gives it
    start, opt_state, opt_step, state = 0, {}, 0, {}
    ckpts = run.checkpoint_dirs() if plan.resume else []
    if ckpts:
        weights, opt_state, state = run.load_checkpoint(ckpts[-1])
        check_reference(plan, state, ckpts[-1])
        start, opt_step = state["step"], state["optimizer_step"]
        check_shapes(weights, expected_shapes(spec, modules), str(ckpts[-1]))  # checkpoints without a config too
    tracker = BestTracker.from_state(state, t.early_stopping_patience, t.early_stopping_min_delta)
    be.attach_lora(spec, modules, weights)
    set_objective(plan, be, spec, modules, starting)
    if plan.dist.world_size > 1:
        be.distribute(plan.dist.world_size)  # DDP or FSDP (torch); MLX sums gradients in all_reduce
    be.make_optimizer(t.adam_betas, t.adam_eps, t.weight_decay, t.optimizer)
    be.load_optimizer_state(opt_state, opt_step)
    n_params = sum(int(np.prod(w.shape)) for w in weights.values())
    return LoadedRun(backend=be, spec=spec, modules=modules, trainable_params=n_params, start=start,
                     end=_resumed_end(plan, tracker, state, start), state=state, tracker=tracker, damage=lost)


def _resumed_end(plan: TrainingPlan, tracker: BestTracker, state: dict, start: int) -> int:
    """Where a resumed run ends, said in one line when nothing is left to train. A run that stopped
    early ends there again, unless more steps are asked than it was given (or early stopping is now
    off): then it trains on, as transformers' Trainer resumed with a larger max_steps, early
    stopping keeping its count (the next validation that does not improve stops it again)."""
    planned, stopped = int(state.get("total_steps", plan.steps)), tracker.stopped_at
    if stopped is not None and (plan.steps > planned or not tracker.patience):
        plan.echo(f"[twinlora] note: this run had stopped early at step {stopped}; training on to step {plan.steps} "
                 + ("(early stopping is off now)" if not tracker.patience else
                    "as asked (the next validation that does not improve stops it again; "
                    "--set training.early_stopping_patience=null trains every step)"))
        tracker.stopped_at = None
    elif stopped is not None:
        plan.echo(f"[twinlora] note: this run stopped early at step {stopped} (no validation improvement for "
                 f"{tracker.bad} validations); nothing to train, only its outputs are written again — ask for "
                 f"more than {planned} steps to train on")
        return stopped
    elif state and start >= plan.steps:
        plan.echo(f"[twinlora] note: this run has already done its {plan.steps} steps; nothing to train, only its "
                 "outputs are written again — ask for more steps to train on")
    return plan.steps


# ------------------------------------------------------------------ fit
@dataclass
class Reporting:
    """The callbacks of the fit loop and the outputs they write to (jobs/callbacks.py)."""
    out: Outputs
    meter: Meter
    validation: Validation
    checkpoints: Checkpoints

    def callbacks(self) -> list:
        return [self.meter, self.validation, self.checkpoints, *step_delay()]


def start_reporting(plan: TrainingPlan, loaded: LoadedRun) -> Reporting:
    """Say what runs, open the run directory (rank 0), and set up the callbacks."""
    cfg, t, run, be = plan.cfg, plan.cfg.training, plan.run, loaded.backend
    _announce(plan, loaded)
    if plan.writes:
        _open_run_dir(plan, loaded.start)
    # TensorBoard drops the events a killed attempt wrote past the checkpoint (all of them without one)
    purge = loaded.start + 1 if loaded.start else (0 if plan.resume else None)
    trackers = Trackers(t.report_to, run, cfg.to_dict(), purge, cfg.name or run.path.name) if plan.writes else None
    keys = mlx_keys(loaded.spec, [block_relative(p) for p in loaded.modules]) if plan.caps.mlx_adapter else None
    out = Outputs(run, plan.writes, plan.echo, trackers, loaded.spec, adapter_meta(plan), keys)
    meter = Meter(out, plan.steps, loaded.start, t.log_every, loaded.state.get("last_loss"))
    # Validations run on rank 0 (and on every rank under FSDP, where the forward is a collective,
    # or with early stopping, so that every rank takes the same decision without a message).
    validating = bool(plan.valid_data) and (plan.dist.is_main or loaded.collective or bool(t.early_stopping_patience))
    validation = Validation(out, be, plan.valid_data, t, plan.tokenizer.pad_token_id, plan.steps, loaded.tracker,
                            validating, plan.dry_run, loaded.state.get("val_loss"))
    extra = {"data_sha256": plan.data_sha, "config": cfg.to_dict(), "backend": plan.backend_name,
             "quantize_scheme": resolved_name(cfg.model.quantize, plan.backend_name),
             **({"reference": ref} if (ref := reference_of(plan)) else {})}
    checkpoints = Checkpoints(out, be, t, plan.steps, extra, meter,
                              validation, plan.writes or loaded.collective and not plan.dry_run)
    return Reporting(out, meter, validation, checkpoints)


def _announce(plan: TrainingPlan, loaded: LoadedRun) -> None:
    cfg, t, spec, echo, name = plan.cfg, plan.cfg.training, loaded.spec, plan.echo, plan.backend_name
    echo(f"[twinlora] backend={name} ({loaded.backend.device}) model={cfg.model.path} LoRA r={spec.rank} "
         f"alpha={spec.alpha} scale={spec.scale:.4g} modules={len(loaded.modules)} "
         f"trainable={loaded.trainable_params:,} "
         f"train={len(plan.train_data)} valid={len(plan.valid_data)} steps={plan.steps}"
         + (f" (resuming at step {loaded.start})" if loaded.start else ""))
    echo(f"[twinlora] {length_note(cfg, len(plan.train_data), plan.steps)}")
    before = written_by(plan.run, loaded.state) if loaded.start else None
    if before and before != name:
        echo(f"[twinlora] note: resuming a {before} checkpoint on {name}: weights, AdamW moments and step "
             f"carry over exactly; the steps from here are {name}'s arithmetic (within the parity tolerance "
             f"of an all-{name} run; with lora.dropout > 0 they draw {name}'s dropout masks)")
    if loaded.damage:
        echo(f"[twinlora] {damage.describe(loaded.damage)}")
    for note in getattr(cfg, "notes", []) + loaded.backend.notes:  # config notes, backend notes
        echo(f"[twinlora] note: {note}")
    for what, stats in plan.truncations.items():
        warning = truncation_warning(stats, cfg.data.max_length, what)
        if warning:
            echo(warning)
    if plan.dist.world_size > 1:
        echo(f"[twinlora] data parallel: {plan.dist.world_size} processes ({plan.dist.kind}, "
             f"{'FSDP2: weights sharded' if loaded.collective else 'replicated'}), "
             f"{t.grad_accumulation // plan.dist.world_size} micro-batches each per step")
    elif t.parallel == "fsdp":
        echo("[twinlora] note: training.parallel: fsdp shards over several processes; this is one (no sharding)")


def _open_run_dir(plan: TrainingPlan, start: int) -> None:
    run = plan.run
    run.prepare(plan.overwrite, plan.resume)
    write_text(run.path / "config.yaml", dump_yaml(plan.cfg))
    if start:
        run.truncate_log(start)
        run.log({"event": "resume", "step": start, "backend": plan.backend_name})
    else:
        if plan.resume:  # --resume before any checkpoint: drop what the killed attempt logged
            run.truncate_log(0)
        run.log({"event": "start", "step": 0, "backend": plan.backend_name, "steps": plan.steps})


def fit_run(plan: TrainingPlan, loaded: LoadedRun, report: Reporting) -> FitState:
    """Stage 3: the validation before training, then the step loop with the callbacks. Ctrl-C (and
    SIGTERM) saves the last applied step and says how to resume."""
    t = plan.cfg.training
    if report.validation.active and loaded.start == 0 and not plan.dry_run:
        report.validation.before_training()
    batches = iterate_batches(plan.train_data, t.batch_size, plan.tokenizer.pad_token_id, t.seed, t.batching,
                              start=loaded.start * t.grad_accumulation)
    state = FitState(loaded.start)
    report.meter.restart_clock()
    try:
        fit(loaded.backend, batches, StepRule.from_config(t, plan.steps, plan.warmup_steps), loaded.start, loaded.end,
            dist=plan.dist, callbacks=report.callbacks(), state=state)
    except Diverged as d:
        raise diverged(plan.run, d.what, d.value, d.step) from None
    except KeyboardInterrupt:
        _interrupted(plan, loaded, report, state)
    return state


def _interrupted(plan: TrainingPlan, loaded: LoadedRun, report: Reporting, state: FitState):
    """Save the state after the last applied update (not if the interrupt hit inside one: the
    weights may be half-updated, so the last checkpoint on disk is the one to resume from; not
    under FSDP: saving gathers over ranks that the interrupt may have stopped)."""
    if report.out.trackers is not None:
        report.out.trackers.flush()
    done = state.completed
    if plan.writes and done > loaded.start and not state.updating and not loaded.collective:
        saved = plan.run.path / "checkpoints" / f"step-{done:06d}"
        path = saved if saved.is_dir() else report.checkpoints.save(done)
        raise Interrupted(f"{interrupt_name()}; progress saved at step {done}", where=str(path),
                          fix="run the same command with --resume to continue") from None
    good = [] if plan.dry_run else plan.run.checkpoint_dirs()
    if good:
        raise Interrupted(f"{interrupt_name()}; the last checkpoint is {good[-1].name}", where=str(good[-1]),
                          fix="run the same command with --resume to continue from it") from None
    raise TrainingError(f"{interrupt_name()} before the first step finished; nothing saved",
                        fix="run the command again") from None


# ------------------------------------------------------------------ finish
def finish(plan: TrainingPlan, loaded: LoadedRun, report: Reporting) -> dict:
    """Stage 4: the validation after training, the last checkpoint, adapter/, summary.json, the
    loss plot and the run's README (rank 0; under FSDP every rank joins the collectives)."""
    dist, val, last_loss = plan.dist, report.validation, report.meter.last_loss
    if plan.dry_run:
        plan.echo("[twinlora] dry run: 2 steps ran, config and data are usable; nothing written")
        return {"dry_run": True, "loss": last_loss}
    rank_result = {"rank": dist.rank, "final_loss": last_loss, "steps": plan.steps}
    if not dist.is_main and not loaded.collective:
        dist.close()
        return rank_result
    end = loaded.tracker.stopped_at if loaded.tracker.stopped_at is not None else loaded.end
    # (a resumed run whose final checkpoint exists already holds the final validation)
    final_val = bool(plan.valid_data) and end == plan.steps and not (loaded.start == end and val.last is not None)
    if final_val:
        val.last = val.run("after training")
        val.keep_best(end, val.last)
    final_weights = loaded.backend.lora_weights()  # gathered once for the last checkpoint and the adapter
    report.checkpoints.save(end, final_weights)
    if not dist.is_main:
        dist.close()
        return rank_result
    if final_val:
        report.out.log({"event": "eval", "step": end, "val_loss": val.last, **val.record()})
    if plan.valid_data:
        plan.echo(f"step {end}/{plan.steps}  validation loss {loaded.tracker.describe(val.last)}"
                 + _reward_accuracy(loaded.tracker.baseline_metrics, val.metrics))
    report.out.trackers.close()
    summary = _summary(plan, loaded, report)
    _write_outputs(plan, loaded, report, final_weights, summary, end)
    dist.close()
    return summary


def _reward_accuracy(before: dict | None, after: dict) -> str:
    """'; reward accuracy 0.812 (before training 0.000)' for DPO validations, '' otherwise."""
    key = "rewards/accuracies"
    if key not in after:
        return ""
    return f"; reward accuracy {after[key]:.3f}" + (f" (before training {before[key]:.3f})" if before else "")


def _summary(plan: TrainingPlan, loaded: LoadedRun, report: Reporting) -> dict:
    be, meter, tracker, q = loaded.backend, report.meter, loaded.tracker, plan.cfg.model.quantize
    elapsed = meter.elapsed()
    summary = {"final_loss": meter.last_loss, "val_loss": report.validation.last, "steps": plan.steps,
               "seconds": round(elapsed, 2), "val_loss_before": tracker.baseline, "best_val_loss": tracker.best,
               "best_step": tracker.best_step, "stopped_early_at": tracker.stopped_at,
               "tokens_per_s": meter.tokens / max(elapsed, 1e-9) if meter.tokens else None, "tokens_seen": meter.tokens,
               "median_step_s": float(np.median(meter.step_times)) if meter.step_times else None,
               "peak_memory_bytes": be.peak_memory_bytes(),
               # frozen base as held in memory: 4-bit packed + scales when model.quantize is set
               "base_weight_bytes": be.base_weight_bytes(), "quantize": q,
               "quantize_scheme": be.scheme.name if be.scheme else None}
    if plan.cfg.training.objective != "sft":
        summary["objective"] = plan.cfg.training.objective
    if report.validation.metrics:   # DPO: the held-out reward accuracy and margins before/after
        summary["val_metrics"] = dict(report.validation.metrics)
        summary["val_metrics_before"] = tracker.baseline_metrics
    if q:  # what the 4-bit base saves against the same run in model.dtype
        full = be.base_weight_bytes(unquantized=True)
        summary.update(base_weight_bytes_unquantized=full, base_memory_saved_bytes=full - summary["base_weight_bytes"])
    if loaded.damage:
        summary["quantization_damage"] = loaded.damage
    return summary


def _write_outputs(plan: TrainingPlan, loaded: LoadedRun, report: Reporting, weights: dict, summary: dict,
                   end: int) -> None:
    cfg, run = plan.cfg, plan.run
    report.out.save_adapter("adapter", weights, summary)
    write_json(run.path / "summary.json", summary)
    run.log({"event": "end", "step": end, **summary})
    run.plot_loss(title=f"{cfg.name or run.path.name}: {plan.backend_name}, {cfg.model.path}, "
                        f"LoRA r={loaded.spec.rank}",
                  best_step=loaded.tracker.best_step)
    write_text(run.path / "README.md", _run_readme(cfg, plan.backend_name, summary, run))
    shown = Path(cfg.output)  # where the run is once a staged --overwrite has been swapped in
    plan.echo(f"[twinlora] adapter: {shown / 'adapter'}  log: {shown / 'log.jsonl'}  plot: {shown / 'loss.png'}")


def adapter_meta(plan: TrainingPlan) -> dict:
    """twinlora.json of the run's adapters, without the metrics: base, data, prompting, config, versions."""
    cfg, run, sha = plan.cfg, plan.run, plan.data_sha
    return {
        "base_model": {"name": cfg.model.path, "path": str(plan.model_dir), "sha256": weights_hash(plan.model_dir),
                       "path_relative": relative_to(plan.model_dir, run.adapter)},
        "data": {"train": {"path": cfg.data.train, "sha256": sha["train"], "examples": len(plan.train_data),
                           "path_relative": relative_to(cfg.data.train, run.adapter)},
                 **({"valid": {"path": cfg.data.valid, "sha256": sha["valid"],
                               "path_relative": relative_to(cfg.data.valid, run.adapter)}} if cfg.data.valid else {})},
        "template": cfg.data.template, "system_prompt": cfg.data.system_prompt, "mask_prompt": cfg.data.mask_prompt,
        "train_on": cfg.data.train_on,
        "config": cfg.to_dict(), "backend": plan.backend_name, "versions": library_versions(plan.caps.packages),
        "quantize_scheme": resolved_name(cfg.model.quantize, plan.backend_name),  # what `4bit` meant for this run
    }


def library_versions(packages) -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for n in [*packages, "twinlora"]:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            pass
    return out


def _run_readme(cfg: Config, backend: str, s: dict, run: RunDir) -> str:
    val = f"{s['val_loss']:.4f}" if s.get("val_loss") is not None else "n/a"
    return (f"# Run `{cfg.name or Path(cfg.output).name}`\n\n"
            f"- backend: {backend}\n- base loaded: {cfg.model.path}\n- data: {cfg.data.train}\n"
            f"- LoRA: r={cfg.lora.rank} alpha={cfg.lora.alpha} targets={cfg.lora.target_modules} "
            f"rsLoRA={cfg.lora.use_rslora} DoRA={cfg.lora.use_dora}\n"
            f"- steps: {s['steps']} in {s['seconds']} s, median step "
            f"{'n/a' if s['median_step_s'] is None else format(s['median_step_s'], '.3f')} s\n"
            f"- final train loss: {s['final_loss']:.4f}, validation loss: {val}"
            + (f" (before training: {s['val_loss_before']:.4f})" if s.get("val_loss_before") is not None else "") + "\n"
            + (f"- best validation loss: {s['best_val_loss']:.4f} at step {s['best_step']} (`adapter-best/`)\n"
               if s.get("best_step") is not None and cfg.training.keep_best and cfg.training.eval_every else "")
            + (f"- early stopping at step {s['stopped_early_at']}\n" if s.get("stopped_early_at") else "")
            + f"- peak memory: {s['peak_memory_bytes'] / 2**20:.0f} MiB\n"
            + (f"- base weights: {s['base_weight_bytes'] / 2**20:.1f} MiB in {s['quantize']} vs "
               f"{s['base_weight_bytes_unquantized'] / 2**20:.1f} MiB in {cfg.model.dtype}: "
               f"{s['base_memory_saved_bytes'] / 2**20:.1f} MiB saved\n" if s.get("quantize") else "")
            + (f"- {damage.describe(s['quantization_damage'])}\n" if s.get("quantization_damage") else "")
            + "\n"
            "Files: `config.yaml` (resolved config), `log.jsonl`, `loss.png`, `checkpoints/`, "
            "`adapter/` (PEFT format + twinlora.json; `adapter/mlx/` holds mlx-lm's format on MLX runs).\n")
