"""The training job, written once for both backends: setup → build → fit → save.

The loop owns everything that must be identical on MLX and PyTorch: the batches (common.batching),
the token-weighted loss over micro-batches, the schedule (common.schedule), clipping, the LoRA
init (drawn in numpy), checkpoints with optimizer moments and data position (exact resume),
NaN detection and Ctrl-C handling. A backend only runs forward/backward and the AdamW step.
"""
from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from common.adapter import check_shapes, expected_shapes, init_lora_weights, non_finite, save_common, spec_from_config
from common.batching import batches_per_epoch, iterate_batches
from common.config import Config, dump_yaml
from common.data.formats import load_examples
from common.errors import ConfigError, DataError, TrainingError
from common.io import relative_to, sha256_file, write_json, write_text
from common.models import peft_base_name, resolve_model, weights_hash
from common.resume import check_init_adapter, check_resume
from common.runs import RunDir
from common.signals import interrupt_name
from common.schedule import lr_at, warmup_steps
from common.tokenize import Tokenizer, load_tokenizer, truncation_warning
from common.tracking import Trackers, check_installed
from jobs.validation import BestTracker, validate


def library_versions(backend: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version
    names = ["mlx", "mlx-lm"] if backend == "mlx" else ["torch", "transformers", "peft"]
    out = {"python": platform.python_version()}
    for n in names + ["twinlora"]:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            pass
    return out


def total_steps(cfg: Config, n_train: int) -> int:
    """training.steps when set (it wins over epochs, as HF max_steps), else epochs (1 when null)."""
    t = cfg.training
    if t.steps:
        return t.steps
    per_epoch = batches_per_epoch(n_train, t.batch_size) / t.grad_accumulation
    return max(1, math.ceil((t.epochs or 1.0) * per_epoch))


def length_note(cfg: Config, n_train: int, steps: int) -> str:
    """How the run length was chosen, e.g. 'steps=30 (3 epochs of 20 examples, 1 × 2 per step)'."""
    t = cfg.training
    per_step = f"{t.batch_size} × {t.grad_accumulation} per step"
    if t.steps:
        epochs = steps * t.batch_size * t.grad_accumulation / max(n_train, 1)
        return (f"steps={steps} (training.steps, ≈{epochs:.2f} epochs of {n_train} examples, {per_step}"
                + (f"; training.epochs={t.epochs:g} is ignored: steps wins)" if t.epochs else ")"))
    return f"steps={steps} ({t.epochs or 1:g} epoch{'s' if (t.epochs or 1) != 1 else ''} of {n_train} examples, {per_step})"


def prepare_data(cfg: Config, tokenizer) -> tuple[Tokenizer, list, list]:
    from common.data.manifest import resolve_data
    # data.train may be a `prepare` manifest.json: use its train/valid files (paths checked there)
    cfg.data.train, cfg.data.valid = resolve_data(cfg.data.train, cfg.data.valid)
    if not cfg.data.train:
        raise DataError("no training data given", where="data.train", fix="set data.train in the config or pass --data")
    d = cfg.data

    def encode(path: str) -> tuple[Tokenizer, list]:
        # one Tokenizer per file, so its truncation/drop counts are that file's
        tk = Tokenizer(tokenizer, d.template, d.system_prompt, d.mask_prompt, d.max_length, d.too_long, d.train_on)
        return tk, tk.encode_all(load_examples(path), path)

    tk, train = encode(d.train)
    tk_valid, valid = encode(d.valid) if d.valid else (None, [])
    tk.valid_stats = tk_valid.stats if tk_valid else {}  # for the one truncation line per file
    return tk, train, valid


def _diverged(run: RunDir, what: str, value: float, step: int) -> TrainingError:
    """NaN/inf loss or gradient norm: stop and point at the last good checkpoint."""
    good = run.checkpoint_dirs()
    return TrainingError(f"{what} became {value} at step {step}; stopped. Last good checkpoint: "
                         f"{good[-1] if good else 'none'}", where=str(run.path),
                         fix="lower training.lr, check the data, then --resume from the last good checkpoint")


def _check_resume(run: RunDir, ckpt: Path, cfg: Config, data_sha: dict, steps: int) -> None:
    """The checkpoint's config (or the run's config.yaml for checkpoints that lack it) against this one."""
    import json

    import yaml
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # load_checkpoint reports the damaged checkpoint
    saved = state.get("config")
    if saved is None and (run.path / "config.yaml").is_file():
        try:
            saved = yaml.safe_load((run.path / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            saved = None
    new = cfg.to_dict()
    if isinstance(saved, dict) and saved.get("data", {}).get("train") and new["data"]["train"]:
        # the same file named another way (relative/absolute) is the same data; its content is compared by hash
        for split in ("train", "valid"):
            a, b = saved["data"].get(split), new["data"].get(split)
            if a and b and Path(a).absolute() == Path(b).absolute():
                saved["data"][split] = b
    check_resume(ckpt, state, saved if isinstance(saved, dict) else None, new, data_sha, steps)


def _fmt_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def evaluate_loss(be, data, batch_size: int, pad_id: int) -> float:
    return validate(be, data, batch_size, pad_id)


def _check_validation_settings(cfg: Config, valid_data: list) -> None:
    """Early stopping needs validations to decide on: refuse it without them, before any long work."""
    t = cfg.training
    if not t.early_stopping_patience:
        return
    if not valid_data:
        raise ConfigError("early stopping needs validation data, and none is given", where="training.early_stopping_patience",
                          fix="set data.valid (or --valid), or remove training.early_stopping_patience")
    if not t.eval_every:
        raise ConfigError("early stopping needs validations during training, and training.eval_every is 0",
                          where="training.early_stopping_patience",
                          fix="set training.eval_every to a step count (e.g. 50), or remove training.early_stopping_patience")


def train(cfg: Config, backend: str, *, overwrite: bool = False, resume: bool = False,
          init_adapter: str | None = None, dry_run: bool = False, echo=print, dist=None) -> dict:
    """Train one run. The output is checked before any work (`common.runs.plan_run`: only our runs
    are resumed or replaced; `--overwrite` builds the new run beside the old and swaps at the end),
    held with a lock for the whole run (`common.lock`), and SIGTERM saves progress like Ctrl-C."""
    from backends import canonical, get_backend
    from jobs.distributed import from_env
    from common.io import replace_dir
    from common.lock import RunLock
    from common.runs import plan_run
    from common.signals import terminate_as_interrupt

    get_backend(backend)
    dist = dist or from_env(canonical(backend), cfg.training)
    kw = dict(overwrite=overwrite, resume=resume, init_adapter=init_adapter, dry_run=dry_run, echo=echo, dist=dist)
    if dry_run:
        return _train(cfg, backend, run_dir=Path(cfg.output), **kw)
    final = Path(os.path.normpath(Path(cfg.output).absolute()))  # "." or "a/.." can be swapped too
    work, staged = plan_run(cfg.output, overwrite, resume)
    if not dist.is_main:
        return _train(cfg, backend, run_dir=work, **kw)
    with RunLock(final), terminate_as_interrupt():
        summary = _train(cfg, backend, run_dir=work, **kw)
        if staged:
            replace_dir(work, final)  # the previous run (ours) goes only now that the new one is complete
            echo(f"[twinlora] the new run replaced the previous one in {final}")
    return summary


def _train(cfg: Config, backend: str, *, run_dir: Path, overwrite: bool = False, resume: bool = False,
           init_adapter: str | None = None, dry_run: bool = False, echo=print, dist=None) -> dict:
    from backends import canonical, get_backend
    from jobs.distributed import from_env
    from common.adapter import load_adapter, modules_for_adapter

    backend_cls = get_backend(backend)
    backend = canonical(backend)
    if backend == "mlx" and cfg.training.batching == "packed":
        raise ConfigError("training.batching: packed is implemented on the torch backend only",
                          where="training.batching", fix="use batching: bucketed with --backend mlx")
    if backend == "mlx" and cfg.training.parallel == "fsdp":
        raise ConfigError("fsdp (sharded training) is implemented on the torch backend only", where="training.parallel",
                          fix="use training.parallel: ddp with --backend mlx (every process holds the model)")
    # Data parallel when launched by `train --nproc N`, torchrun or mlx.launch (1 process otherwise):
    # rank r runs micro-batches i with i % N == r, gradients and token counts are summed before the step.
    dist = dist or from_env(backend, cfg.training)
    writes = not dry_run and dist.is_main  # only rank 0 writes the run directory
    echo = echo if dist.is_main else (lambda *a, **k: None)
    run = RunDir(run_dir)
    model_dir = resolve_model(cfg.model.path)
    tokenizer = load_tokenizer(model_dir)
    tk, train_data, valid_data = prepare_data(cfg, tokenizer)
    t = cfg.training
    steps = 2 if dry_run else total_steps(cfg, len(train_data))
    _check_validation_settings(cfg, valid_data)
    check_installed(t.report_to if not dry_run else [])
    warm = warmup_steps(steps, t.warmup_steps, t.warmup_ratio)

    if writes:
        run.check_free(overwrite, resume)  # fail early; the directory is created once setup succeeded
        if resume:
            run.clean_stale()
    dist.barrier()  # other ranks read the checkpoints only after rank 0 has cleaned them
    data_sha = {"train": sha256_file(cfg.data.train), **({"valid": sha256_file(cfg.data.valid)} if cfg.data.valid else {})}
    if resume and run.checkpoint_dirs():  # before the model loads: what may change on --resume
        _check_resume(run, run.checkpoint_dirs()[-1], cfg, data_sha, steps)
    be = backend_cls(model_dir, dtype=cfg.model.dtype, quantize=cfg.model.quantize,
                     grad_checkpointing=t.grad_checkpointing, attn_implementation=cfg.model.attn_implementation,
                     fsdp=t.parallel == "fsdp" and dist.world_size > 1)
    spec, modules = spec_from_config(cfg.lora, be.linear_modules(), be.num_hidden_layers(),
                                   peft_base_name(cfg.model.path, model_dir))
    weights = init_lora_weights(spec, modules, t.seed)
    if init_adapter:
        spec_i, weights, _ = load_adapter(Path(init_adapter))
        check_init_adapter(spec_i, spec, init_adapter)
        modules_for_adapter(spec_i, weights, {p: modules[p] for p in modules}, init_adapter)
    start, opt_state, opt_step, state = 0, {}, 0, {}
    end = steps  # the last step: `steps`, or where early stopping ended the run
    ckpts = run.checkpoint_dirs() if resume else []
    if resume and ckpts:
        weights, opt_state, state = run.load_checkpoint(ckpts[-1])
        start, opt_step = state["step"], state["optimizer_step"]
        check_shapes(weights, expected_shapes(spec, modules), str(ckpts[-1]))  # checkpoints without a config too
    tracker = BestTracker.from_state(state, t.early_stopping_patience, t.early_stopping_min_delta)
    if tracker.stopped_at is not None:
        end = tracker.stopped_at  # the run had stopped early: only the final writes remain
    be.attach_lora(spec, modules, weights)
    if dist.world_size > 1:
        be.distribute(dist.world_size)  # DDP or FSDP (torch); MLX sums gradients in all_reduce
    # Under FSDP the weights live in shards: forward passes (validation) and reading the weights
    # (checkpoints, the adapter) are collectives that every rank runs; only rank 0 writes.
    collective = be.sharded
    be.make_optimizer(t.adam_betas, t.adam_eps, t.weight_decay, t.optimizer)
    be.load_optimizer_state(opt_state, opt_step)
    pad_id = tokenizer.pad_token_id

    n_params = sum(int(np.prod(s)) for s in [w.shape for w in weights.values()])
    echo(f"[twinlora] backend={backend} ({be.device}) model={cfg.model.path} LoRA r={spec.rank} alpha={spec.alpha} "
         f"scale={spec.scale:.4g} modules={len(modules)} trainable={n_params:,} train={len(train_data)} "
         f"valid={len(valid_data)} steps={steps}" + (f" (resuming at step {start})" if start else ""))
    echo(f"[twinlora] {length_note(cfg, len(train_data), steps)}")
    for note in getattr(cfg, "notes", []) + getattr(be, "notes", []):  # config notes, backend notes
        echo(f"[twinlora] note: {note}")
    for stats, what in ((tk.stats, "training"), (tk.valid_stats, "validation")):
        warning = truncation_warning(stats, cfg.data.max_length, what)
        if warning:
            echo(warning)

    meta_base = {
        "base_model": {"name": cfg.model.path, "path": str(model_dir), "sha256": weights_hash(model_dir),
                       "path_relative": relative_to(model_dir, run.adapter)},
        "data": {"train": {"path": cfg.data.train, "sha256": data_sha["train"], "examples": len(train_data),
                           "path_relative": relative_to(cfg.data.train, run.adapter)},
                 **({"valid": {"path": cfg.data.valid, "sha256": data_sha["valid"],
                               "path_relative": relative_to(cfg.data.valid, run.adapter)}} if cfg.data.valid else {})},
        "template": cfg.data.template, "system_prompt": cfg.data.system_prompt, "mask_prompt": cfg.data.mask_prompt,
        "train_on": cfg.data.train_on,
        "config": cfg.to_dict(), "backend": backend, "versions": library_versions(backend),
    }
    if dist.world_size > 1:
        echo(f"[twinlora] data parallel: {dist.world_size} processes ({dist.kind}, "
             f"{'FSDP2: weights sharded' if collective else 'replicated'}), "
             f"{t.grad_accumulation // dist.world_size} micro-batches each per step")
    elif t.parallel == "fsdp":
        echo("[twinlora] note: training.parallel: fsdp shards over several processes; this is one (no sharding)")
    if writes:
        run.prepare(overwrite, resume)
        write_text(run.path / "config.yaml", dump_yaml(cfg))
        if start:
            run.truncate_log(start)
            run.log({"event": "resume", "step": start})
        else:
            if resume:  # --resume before any checkpoint: drop what the killed attempt logged
                run.truncate_log(0)
            run.log({"event": "start", "step": 0, "backend": backend, "steps": steps})
    # TensorBoard drops the events a killed attempt wrote past the checkpoint (all of them without one)
    purge = start + 1 if start else (0 if resume else None)
    trackers = Trackers(t.report_to, run, cfg.to_dict(), purge, cfg.name or run.path.name) if writes else None

    def log(rec: dict) -> None:
        if writes:
            run.log(rec)
            trackers.log(rec)

    # Validations run on rank 0 (and on every rank under FSDP, where the forward is a collective,
    # or with early stopping, so that every rank takes the same decision without a message).
    validating = bool(valid_data) and (dist.is_main or collective or bool(t.early_stopping_patience))

    def keep_best(at: int, loss: float) -> None:
        """Record a validation; write adapter-best/ when it is the best so far (under FSDP every
        rank gathers the weights). With eval_every 0 the only validation after training is the
        last step's: adapter/ is the best, no copy is written."""
        if tracker.update(at, loss) and t.keep_best and t.eval_every:
            w = be.lora_weights()
            if writes:
                save_common(run.path / "adapter-best", spec, w,
                            {**meta_base, "metrics": {"val_loss": loss, "step": at, "best_of": "validation loss"}},
                            mlx_keys_list=getattr(be, "keys", None) if backend == "mlx" else None)

    if validating and start == 0 and not dry_run:
        tracker.baseline = validate(be, valid_data, t.batch_size, pad_id, echo, "before training")
        log({"event": "eval", "step": 0, "val_loss": tracker.baseline})
        echo(f"step 0/{steps}  validation loss {tracker.baseline:.4f} (before training)")

    batches = iterate_batches(train_data, t.batch_size, pad_id, t.seed, t.batching, start=start * t.grad_accumulation)
    last_loss, val_loss, step = state.get("last_loss"), state.get("val_loss"), start
    t0, tokens_seen, step_times = time.time(), 0, []
    completed, updating = start, False  # steps whose update is applied; inside apply_gradients
    # Test hook: seconds to sleep after each step, so tests can kill a run mid-way (tests/test_resume.py).
    step_delay = float(os.environ.get("TWINLORA_TEST_STEP_DELAY") or 0)

    def checkpoint(at: int, weights: dict | None = None):
        """Save step `at` (rank 0); under FSDP every rank calls it to gather the weights.
        `weights`: the adapter weights when the caller has already read them."""
        opt, ostep = be.optimizer_state()
        weights = be.lora_weights() if weights is None else weights
        if not writes:
            return None
        bad = non_finite(weights)
        if bad:  # never write a poisoned checkpoint: the last good one stays the last one
            raise _diverged(run, f"LoRA weight {bad}", "non-finite (NaN/inf)", at)
        return run.save_checkpoint(at, weights, opt, ostep,
                                   {"total_steps": steps, "last_loss": last_loss, "val_loss": val_loss,
                                    "micro_batches_done": at * t.grad_accumulation,
                                    "data_sha256": data_sha, "config": cfg.to_dict(),
                                    "validation": tracker.state()}, t.keep_checkpoints)

    try:
        for step in range(start, end):
            ts = time.time()
            loss_sum, n_targets, n_tokens = 0.0, 0, 0
            for i in range(t.grad_accumulation):
                b = next(batches)
                if i % dist.world_size != dist.rank:
                    continue  # another rank's micro-batch
                be.seed(t.seed * 1_000_003 + step + 1_000_000_007 * i)  # dropout depends on (step, i) only
                # this rank's last micro-batch of the step: DDP/FSDP reduce the gradients in its backward
                s, n = be.accumulate(b, sync=i + dist.world_size >= t.grad_accumulation)
                loss_sum, n_targets, n_tokens = loss_sum + s, n_targets + n, n_tokens + b.n_tokens
            loss_sum, n_targets, n_tokens = dist.all_reduce(be, loss_sum, n_targets, n_tokens)
            loss = loss_sum / max(n_targets, 1)
            if not math.isfinite(loss):
                raise _diverged(run, "loss", loss, step + 1)
            lr = lr_at(step, steps, t.lr, t.schedule, warm, t.min_lr_ratio)
            updating = True
            gnorm = be.apply_gradients(lr, n_targets, t.max_grad_norm)
            completed = step + 1
            updating = False
            if not math.isfinite(gnorm):
                raise _diverged(run, "gradient norm", gnorm, step + 1)
            last_loss = loss
            dt = time.time() - ts
            step_times.append(dt)
            tokens_seen += n_tokens
            done = step + 1
            if done % t.log_every == 0 or done == steps:
                elapsed = time.time() - t0
                tps = tokens_seen / max(elapsed, 1e-9)
                eta = elapsed / (done - start) * (steps - done)
                rec = {"event": "train", "step": done, "loss": loss, "lr": lr, "grad_norm": gnorm,
                       "targets": n_targets, "tokens": n_tokens, "tokens_per_s": tps, "step_s": dt}
                log(rec)
                echo(f"step {done}/{steps}  loss {loss:.4f}  lr {lr:.2e}  grad {gnorm:.3f}  "
                     f"{tps:,.0f} tok/s  ETA {_fmt_eta(eta)}")
            if validating and t.eval_every and done % t.eval_every == 0 and done != steps:
                val_loss = validate(be, valid_data, t.batch_size, pad_id)
                log({"event": "eval", "step": done, "val_loss": val_loss})
                if not dry_run:
                    keep_best(done, val_loss)
                echo(f"step {done}/{steps}  validation loss {tracker.describe(val_loss)}")
                if tracker.stopped_at is not None:
                    echo(f"[twinlora] early stopping at step {done}: {tracker.bad} validations without an improvement "
                         f"> {t.early_stopping_min_delta:g} (patience {t.early_stopping_patience}); best "
                         f"{tracker.best:.4f} at step {tracker.best_step}")
                    end = done
                    break
            if (writes or collective and not dry_run) and t.save_every and done % t.save_every == 0 and done != steps:
                checkpoint(done)
            if step_delay:
                time.sleep(step_delay)
    except KeyboardInterrupt:
        # Save the state after the last applied update (not if the interrupt hit inside one: the
        # weights may be half-updated, so the last checkpoint on disk is the one to resume from).
        # (not under FSDP: saving gathers over ranks that the interrupt may have stopped)
        if trackers is not None:
            trackers.flush()
        if writes and completed > start and not updating and not collective:
            saved = run.path / "checkpoints" / f"step-{completed:06d}"
            path = saved if saved.is_dir() else checkpoint(completed)
            raise TrainingError(f"{interrupt_name()}; progress saved at step {completed}", where=str(path),
                                fix="run the same command with --resume to continue") from None
        good = [] if dry_run else run.checkpoint_dirs()
        if good:
            raise TrainingError(f"{interrupt_name()}; the last checkpoint is {good[-1].name}", where=str(good[-1]),
                                fix="run the same command with --resume to continue from it") from None
        raise TrainingError(f"{interrupt_name()} before the first step finished; nothing saved",
                            fix="run the command again") from None

    if dry_run:
        echo("[twinlora] dry run: 2 steps ran, config and data are usable; nothing written")
        return {"dry_run": True, "loss": last_loss}
    if not dist.is_main and not collective:
        dist.close()
        return {"rank": dist.rank, "final_loss": last_loss, "steps": steps}
    # (a resumed run whose final checkpoint exists already holds the final validation)
    final_val = bool(valid_data) and end == steps and not (start == end and state.get("val_loss") is not None)
    if final_val:
        val_loss = validate(be, valid_data, t.batch_size, pad_id, echo, "after training")
        keep_best(end, val_loss)
    final_weights = be.lora_weights()  # gathered once for the last checkpoint and the adapter
    checkpoint(end, final_weights)
    if not dist.is_main:
        dist.close()
        return {"rank": dist.rank, "final_loss": last_loss, "steps": steps}
    if final_val:
        log({"event": "eval", "step": end, "val_loss": val_loss})
    if valid_data:
        echo(f"step {end}/{steps}  validation loss {tracker.describe(val_loss)}")
    trackers.close()
    elapsed = time.time() - t0
    summary = {"final_loss": last_loss, "val_loss": val_loss, "steps": steps, "seconds": round(elapsed, 2),
               "val_loss_before": tracker.baseline, "best_val_loss": tracker.best, "best_step": tracker.best_step,
               "stopped_early_at": tracker.stopped_at,
               "tokens_per_s": tokens_seen / max(elapsed, 1e-9) if tokens_seen else None,
               "median_step_s": float(np.median(step_times)) if step_times else None,
               "peak_memory_bytes": be.peak_memory_bytes(),
               # frozen base as held in memory: 4-bit packed + scales when model.quantize is set
               "base_weight_bytes": be.base_weight_bytes(),
               "quantize": cfg.model.quantize}
    if cfg.model.quantize:  # what the 4-bit base saves against the same run in model.dtype
        full = be.base_weight_bytes(unquantized=True)
        summary.update(base_weight_bytes_unquantized=full, base_memory_saved_bytes=full - summary["base_weight_bytes"])
    mlx_keys = getattr(be, "keys", None) if backend == "mlx" else None
    save_common(run.adapter, spec, final_weights, {**meta_base, "metrics": summary}, mlx_keys_list=mlx_keys)
    write_json(run.path / "summary.json", summary)
    run.log({"event": "end", "step": end, **summary})
    run.plot_loss(title=f"{cfg.name or run.path.name}: {backend}, {cfg.model.path}, LoRA r={spec.rank}",
                  best_step=tracker.best_step)
    write_text(run.path / "README.md", _run_readme(cfg, backend, summary, run))
    shown = Path(cfg.output)  # where the run is once a staged --overwrite has been swapped in
    echo(f"[twinlora] adapter: {shown / 'adapter'}  log: {shown / 'log.jsonl'}  plot: {shown / 'loss.png'}")
    dist.close()
    return summary


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
            + "\n"
            "Files: `config.yaml` (resolved config), `log.jsonl`, `loss.png`, `checkpoints/`, "
            "`adapter/` (PEFT format + twinlora.json; `adapter/mlx/` holds mlx-lm's format on MLX runs).\n")
