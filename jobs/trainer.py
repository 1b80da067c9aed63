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
from jobs.train_setup import Job, length_note, setup, written_by
from jobs.validation import BestTracker


def train(cfg: Config, backend: str, *, overwrite: bool = False, resume: bool = False,
          init_adapter: str | None = None, dry_run: bool = False, echo=print, dist=None) -> dict:
    """Train one run. The output is checked before any work (`common.runs.run_dir.plan_run`: only our runs
    are resumed or replaced; `--overwrite` builds the new run beside the old and swaps at the end),
    held with a lock for the whole run (`common.runs.lock`), and SIGTERM saves progress like Ctrl-C."""
    get_backend(backend)
    dist = dist or from_env(canonical(backend), cfg.training)
    kw = dict(overwrite=overwrite, resume=resume, init_adapter=init_adapter, dry_run=dry_run, echo=echo, dist=dist)
    if dry_run:
        return run_stages(cfg, backend, run_dir=Path(cfg.output), **kw)
    work, staged = plan_run(cfg.output, overwrite, resume)
    final = Path(os.path.normpath(real_path(cfg.output).absolute()))  # "." or "a/.." can be swapped too; a link's target
    if not dist.is_main:
        return run_stages(cfg, backend, run_dir=work, **kw)
    with RunLock(final), terminate_as_interrupt():
        summary = run_stages(cfg, backend, run_dir=work, **kw)
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


def run_stages(cfg: Config, backend: str, *, run_dir: Path, overwrite: bool = False, resume: bool = False,
               init_adapter: str | None = None, dry_run: bool = False, echo=print, dist=None) -> dict:
    """setup → build → fit → finish, in `run_dir` (the run's directory, or its staging twin)."""
    job = setup(cfg, backend, run_dir, overwrite=overwrite, resume=resume, init_adapter=init_adapter,
                dry_run=dry_run, echo=echo, dist=dist)
    model = build(job)
    report = start_reporting(job, model)
    fit_run(job, model, report)
    return finish(job, model, report)


# ------------------------------------------------------------------ build
@dataclass
class Model:
    """What build made: the backend holding the base and the adapter, and where the run starts."""
    be: Backend
    spec: AdapterSpec
    modules: dict                # adapted module path → (out, in)
    n_params: int
    start: int                   # the first step to run (> 0 when resumed)
    end: int                     # the last step: the run's steps, or where early stopping ended it
    state: dict                  # the resumed checkpoint's trainer state ({} for a new run)
    tracker: BestTracker
    damage: dict | None = None   # the quantized base against the float base (jobs/damage.py)

    @property
    def collective(self) -> bool:
        """FSDP: the weights live in shards, forward passes and weight reads involve every rank."""
        return self.be.sharded


def build(job: Job) -> Model:
    """Stage 2: the base model on the backend, the adapter spec, the LoRA weights (drawn in numpy,
    from --init-adapter or from the last checkpoint), data parallelism and the optimizer."""
    cfg, t, run = job.cfg, job.cfg.training, job.run
    measuring = bool(cfg.model.quantize) and not job.dry_run and job.dist.is_main
    source, ids = damage.damage_ids(job.valid_data, job.train_data) if measuring else ("", [])
    be = job.backend_cls(job.model_dir, dtype=cfg.model.dtype, quantize=cfg.model.quantize,
                         grad_checkpointing=t.grad_checkpointing, attn_implementation=cfg.model.attn_implementation,
                         fsdp=t.parallel == "fsdp" and job.dist.world_size > 1)
    reference = damage.float_logits(job.backend_cls, job.model_dir, cfg.model.dtype, ids) if ids else None
    lost = damage.measure(be, reference, ids, be.scheme, cfg.model.dtype, source) if ids else None
    spec, modules = spec_from_config(cfg.lora, be.linear_modules(), be.num_hidden_layers(),
                                     peft_base_name(cfg.model.path, job.model_dir))
    weights = init_lora_weights(spec, modules, t.seed)
    if job.init_adapter:
        spec_i, weights, _ = load_adapter(Path(job.init_adapter))
        check_init_adapter(spec_i, spec, job.init_adapter)
        modules_for_adapter(spec_i, weights, {p: modules[p] for p in modules}, job.init_adapter)
    starting = weights   # the reference of an objective that has one, when --init-adapter gives it
    start, opt_state, opt_step, state = 0, {}, 0, {}
    ckpts = run.checkpoint_dirs() if job.resume else []
    if ckpts:
        weights, opt_state, state = run.load_checkpoint(ckpts[-1])
        check_reference(job, state, ckpts[-1])
        start, opt_step = state["step"], state["optimizer_step"]
        check_shapes(weights, expected_shapes(spec, modules), str(ckpts[-1]))  # checkpoints without a config too
    tracker = BestTracker.from_state(state, t.early_stopping_patience, t.early_stopping_min_delta)
    be.attach_lora(spec, modules, weights)
    set_objective(job, be, spec, modules, starting)
    if job.dist.world_size > 1:
        be.distribute(job.dist.world_size)  # DDP or FSDP (torch); MLX sums gradients in all_reduce
    be.make_optimizer(t.adam_betas, t.adam_eps, t.weight_decay, t.optimizer)
    be.load_optimizer_state(opt_state, opt_step)
    n_params = sum(int(np.prod(w.shape)) for w in weights.values())
    return Model(be, spec, modules, n_params, start, _resumed_end(job, tracker, state, start), state, tracker, lost)


def _resumed_end(job: Job, tracker: BestTracker, state: dict, start: int) -> int:
    """Where a resumed run ends, said in one line when nothing is left to train. A run that stopped
    early ends there again, unless more steps are asked than it was given (or early stopping is now
    off): then it trains on, as transformers' Trainer resumed with a larger max_steps, early
    stopping keeping its count (the next validation that does not improve stops it again)."""
    planned, stopped = int(state.get("total_steps", job.steps)), tracker.stopped_at
    if stopped is not None and (job.steps > planned or not tracker.patience):
        job.echo(f"[twinlora] note: this run had stopped early at step {stopped}; training on to step {job.steps} "
                 + ("(early stopping is off now)" if not tracker.patience else
                    "as asked (the next validation that does not improve stops it again; "
                    "--set training.early_stopping_patience=null trains every step)"))
        tracker.stopped_at = None
    elif stopped is not None:
        job.echo(f"[twinlora] note: this run stopped early at step {stopped} (no validation improvement for "
                 f"{tracker.bad} validations); nothing to train, only its outputs are written again — ask for "
                 f"more than {planned} steps to train on")
        return stopped
    elif state and start >= job.steps:
        job.echo(f"[twinlora] note: this run has already done its {job.steps} steps; nothing to train, only its "
                 "outputs are written again — ask for more steps to train on")
    return job.steps


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


def start_reporting(job: Job, model: Model) -> Reporting:
    """Say what runs, open the run directory (rank 0), and set up the callbacks."""
    cfg, t, run, be = job.cfg, job.cfg.training, job.run, model.be
    _announce(job, model)
    if job.writes:
        _open_run_dir(job, model.start)
    # TensorBoard drops the events a killed attempt wrote past the checkpoint (all of them without one)
    purge = model.start + 1 if model.start else (0 if job.resume else None)
    trackers = Trackers(t.report_to, run, cfg.to_dict(), purge, cfg.name or run.path.name) if job.writes else None
    keys = mlx_keys(model.spec, [block_relative(p) for p in model.modules]) if job.caps.mlx_adapter else None
    out = Outputs(run, job.writes, job.echo, trackers, model.spec, adapter_meta(job), keys)
    meter = Meter(out, job.steps, model.start, t.log_every, model.state.get("last_loss"))
    # Validations run on rank 0 (and on every rank under FSDP, where the forward is a collective,
    # or with early stopping, so that every rank takes the same decision without a message).
    validating = bool(job.valid_data) and (job.dist.is_main or model.collective or bool(t.early_stopping_patience))
    validation = Validation(out, be, job.valid_data, t, job.tokenizer.pad_token_id, job.steps, model.tracker,
                            validating, job.dry_run, model.state.get("val_loss"))
    extra = {"data_sha256": job.data_sha, "config": cfg.to_dict(), "backend": job.backend,
             "quantize_scheme": resolved_name(cfg.model.quantize, job.backend),
             **({"reference": ref} if (ref := reference_of(job)) else {})}
    checkpoints = Checkpoints(out, be, t, job.steps, extra, meter,
                              validation, job.writes or model.collective and not job.dry_run)
    return Reporting(out, meter, validation, checkpoints)


def _announce(job: Job, model: Model) -> None:
    cfg, t, spec, echo = job.cfg, job.cfg.training, model.spec, job.echo
    echo(f"[twinlora] backend={job.backend} ({model.be.device}) model={cfg.model.path} LoRA r={spec.rank} "
         f"alpha={spec.alpha} scale={spec.scale:.4g} modules={len(model.modules)} trainable={model.n_params:,} "
         f"train={len(job.train_data)} valid={len(job.valid_data)} steps={job.steps}"
         + (f" (resuming at step {model.start})" if model.start else ""))
    echo(f"[twinlora] {length_note(cfg, len(job.train_data), job.steps)}")
    before = written_by(job.run, model.state) if model.start else None
    if before and before != job.backend:
        echo(f"[twinlora] note: resuming a {before} checkpoint on {job.backend}: weights, AdamW moments and step "
             f"carry over exactly; the steps from here are {job.backend}'s arithmetic (within the parity tolerance "
             f"of an all-{job.backend} run; with lora.dropout > 0 they draw {job.backend}'s dropout masks)")
    if model.damage:
        echo(f"[twinlora] {damage.describe(model.damage)}")
    for note in getattr(cfg, "notes", []) + model.be.notes:  # config notes, backend notes
        echo(f"[twinlora] note: {note}")
    for stats, what in ((job.tk.stats, "training"), (job.tk.valid_stats, "validation")):
        warning = truncation_warning(stats, cfg.data.max_length, what)
        if warning:
            echo(warning)
    if job.dist.world_size > 1:
        echo(f"[twinlora] data parallel: {job.dist.world_size} processes ({job.dist.kind}, "
             f"{'FSDP2: weights sharded' if model.collective else 'replicated'}), "
             f"{t.grad_accumulation // job.dist.world_size} micro-batches each per step")
    elif t.parallel == "fsdp":
        echo("[twinlora] note: training.parallel: fsdp shards over several processes; this is one (no sharding)")


def _open_run_dir(job: Job, start: int) -> None:
    run = job.run
    run.prepare(job.overwrite, job.resume)
    write_text(run.path / "config.yaml", dump_yaml(job.cfg))
    if start:
        run.truncate_log(start)
        run.log({"event": "resume", "step": start, "backend": job.backend})
    else:
        if job.resume:  # --resume before any checkpoint: drop what the killed attempt logged
            run.truncate_log(0)
        run.log({"event": "start", "step": 0, "backend": job.backend, "steps": job.steps})


def fit_run(job: Job, model: Model, report: Reporting) -> FitState:
    """Stage 3: the validation before training, then the step loop with the callbacks. Ctrl-C (and
    SIGTERM) saves the last applied step and says how to resume."""
    t = job.cfg.training
    if report.validation.active and model.start == 0 and not job.dry_run:
        report.validation.before_training()
    batches = iterate_batches(job.train_data, t.batch_size, job.tokenizer.pad_token_id, t.seed, t.batching,
                              start=model.start * t.grad_accumulation)
    state = FitState(model.start)
    report.meter.restart_clock()
    try:
        fit(model.be, batches, StepRule.from_config(t, job.steps, job.warm), model.start, model.end,
            dist=job.dist, callbacks=report.callbacks(), state=state)
    except Diverged as d:
        raise diverged(job.run, d.what, d.value, d.step) from None
    except KeyboardInterrupt:
        _interrupted(job, model, report, state)
    return state


def _interrupted(job: Job, model: Model, report: Reporting, state: FitState):
    """Save the state after the last applied update (not if the interrupt hit inside one: the
    weights may be half-updated, so the last checkpoint on disk is the one to resume from; not
    under FSDP: saving gathers over ranks that the interrupt may have stopped)."""
    if report.out.trackers is not None:
        report.out.trackers.flush()
    done = state.completed
    if job.writes and done > model.start and not state.updating and not model.collective:
        saved = job.run.path / "checkpoints" / f"step-{done:06d}"
        path = saved if saved.is_dir() else report.checkpoints.save(done)
        raise Interrupted(f"{interrupt_name()}; progress saved at step {done}", where=str(path),
                          fix="run the same command with --resume to continue") from None
    good = [] if job.dry_run else job.run.checkpoint_dirs()
    if good:
        raise Interrupted(f"{interrupt_name()}; the last checkpoint is {good[-1].name}", where=str(good[-1]),
                          fix="run the same command with --resume to continue from it") from None
    raise TrainingError(f"{interrupt_name()} before the first step finished; nothing saved",
                        fix="run the command again") from None


# ------------------------------------------------------------------ finish
def finish(job: Job, model: Model, report: Reporting) -> dict:
    """Stage 4: the validation after training, the last checkpoint, adapter/, summary.json, the
    loss plot and the run's README (rank 0; under FSDP every rank joins the collectives)."""
    dist, val, last_loss = job.dist, report.validation, report.meter.last_loss
    if job.dry_run:
        job.echo("[twinlora] dry run: 2 steps ran, config and data are usable; nothing written")
        return {"dry_run": True, "loss": last_loss}
    rank_result = {"rank": dist.rank, "final_loss": last_loss, "steps": job.steps}
    if not dist.is_main and not model.collective:
        dist.close()
        return rank_result
    end = model.tracker.stopped_at if model.tracker.stopped_at is not None else model.end
    # (a resumed run whose final checkpoint exists already holds the final validation)
    final_val = bool(job.valid_data) and end == job.steps and not (model.start == end and val.last is not None)
    if final_val:
        val.last = val.run("after training")
        val.keep_best(end, val.last)
    final_weights = model.be.lora_weights()  # gathered once for the last checkpoint and the adapter
    report.checkpoints.save(end, final_weights)
    if not dist.is_main:
        dist.close()
        return rank_result
    if final_val:
        report.out.log({"event": "eval", "step": end, "val_loss": val.last, **val.record()})
    if job.valid_data:
        job.echo(f"step {end}/{job.steps}  validation loss {model.tracker.describe(val.last)}"
                 + _reward_accuracy(model.tracker.baseline_metrics, val.metrics))
    report.out.trackers.close()
    summary = _summary(job, model, report)
    _write_outputs(job, model, report, final_weights, summary, end)
    dist.close()
    return summary


def _reward_accuracy(before: dict | None, after: dict) -> str:
    """'; reward accuracy 0.812 (before training 0.000)' for DPO validations, '' otherwise."""
    key = "rewards/accuracies"
    if key not in after:
        return ""
    return f"; reward accuracy {after[key]:.3f}" + (f" (before training {before[key]:.3f})" if before else "")


def _summary(job: Job, model: Model, report: Reporting) -> dict:
    be, meter, tracker, q = model.be, report.meter, model.tracker, job.cfg.model.quantize
    elapsed = meter.elapsed()
    summary = {"final_loss": meter.last_loss, "val_loss": report.validation.last, "steps": job.steps,
               "seconds": round(elapsed, 2), "val_loss_before": tracker.baseline, "best_val_loss": tracker.best,
               "best_step": tracker.best_step, "stopped_early_at": tracker.stopped_at,
               "tokens_per_s": meter.tokens / max(elapsed, 1e-9) if meter.tokens else None, "tokens_seen": meter.tokens,
               "median_step_s": float(np.median(meter.step_times)) if meter.step_times else None,
               "peak_memory_bytes": be.peak_memory_bytes(),
               # frozen base as held in memory: 4-bit packed + scales when model.quantize is set
               "base_weight_bytes": be.base_weight_bytes(), "quantize": q,
               "quantize_scheme": be.scheme.name if be.scheme else None}
    if job.cfg.training.objective != "sft":
        summary["objective"] = job.cfg.training.objective
    if report.validation.metrics:   # DPO: the held-out reward accuracy and margins before/after
        summary["val_metrics"] = dict(report.validation.metrics)
        summary["val_metrics_before"] = tracker.baseline_metrics
    if q:  # what the 4-bit base saves against the same run in model.dtype
        full = be.base_weight_bytes(unquantized=True)
        summary.update(base_weight_bytes_unquantized=full, base_memory_saved_bytes=full - summary["base_weight_bytes"])
    if model.damage:
        summary["quantization_damage"] = model.damage
    return summary


def _write_outputs(job: Job, model: Model, report: Reporting, weights: dict, summary: dict, end: int) -> None:
    cfg, run = job.cfg, job.run
    report.out.save_adapter("adapter", weights, summary)
    write_json(run.path / "summary.json", summary)
    run.log({"event": "end", "step": end, **summary})
    run.plot_loss(title=f"{cfg.name or run.path.name}: {job.backend}, {cfg.model.path}, LoRA r={model.spec.rank}",
                  best_step=model.tracker.best_step)
    write_text(run.path / "README.md", _run_readme(cfg, job.backend, summary, run))
    shown = Path(cfg.output)  # where the run is once a staged --overwrite has been swapped in
    job.echo(f"[twinlora] adapter: {shown / 'adapter'}  log: {shown / 'log.jsonl'}  plot: {shown / 'loss.png'}")


def adapter_meta(job: Job) -> dict:
    """twinlora.json of the run's adapters, without the metrics: base, data, prompting, config, versions."""
    cfg, run, sha = job.cfg, job.run, job.data_sha
    return {
        "base_model": {"name": cfg.model.path, "path": str(job.model_dir), "sha256": weights_hash(job.model_dir),
                       "path_relative": relative_to(job.model_dir, run.adapter)},
        "data": {"train": {"path": cfg.data.train, "sha256": sha["train"], "examples": len(job.train_data),
                           "path_relative": relative_to(cfg.data.train, run.adapter)},
                 **({"valid": {"path": cfg.data.valid, "sha256": sha["valid"],
                               "path_relative": relative_to(cfg.data.valid, run.adapter)}} if cfg.data.valid else {})},
        "template": cfg.data.template, "system_prompt": cfg.data.system_prompt, "mask_prompt": cfg.data.mask_prompt,
        "train_on": cfg.data.train_on,
        "config": cfg.to_dict(), "backend": job.backend, "versions": library_versions(job.caps.packages),
        "quantize_scheme": resolved_name(cfg.model.quantize, job.backend),  # what `4bit` meant for this run
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
            f"- backend: {backend}\n- base model: {cfg.model.path}\n- data: {cfg.data.train}\n"
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
