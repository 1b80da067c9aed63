"""Stage 1 of the training job (jobs/trainer.py): everything decided before the model loads.
What the backend cannot do is refused, the data read and tokenized, the run length fixed, the
run directory and a `--resume` checked, so that a mistake costs seconds, not a model load.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from backends import canonical, get_backend
from backends.capabilities import Capabilities, capabilities
from common.adapters.base import check_adapter_scheme
from common.training.batching import batches_per_epoch
from common.config.schema import Config
from common.data.formats import load_examples
from common.data.pairs import load_pairs
from common.errors import ConfigError, DataError
from common.runs.io import sha256_file
from common.models.resolve import resolve_model
from common.models.quantize import recorded_scheme, resolved_name
from common.config.resume import check_backend_switch, check_resume, resumed_quantize
from common.runs.run_dir import RunDir
from common.training.schedule import warmup_steps
from common.training.pairs import PairTokenizer
from common.training.tokenize import Tokenizer, load_tokenizer
from common.runs.tracking import check_installed
from jobs.distributed import Dist, from_env


@dataclass(kw_only=True)
class TrainRequest:
    """What `train` is asked to do: the config, the backend and the command's flags. Built once by
    `train` and handed to the stages whole, so no list of keywords is repeated through them."""
    cfg: Config
    backend: str                 # as the user named it (mlx, cuda, torch)
    overwrite: bool = False
    resume: bool = False
    init_adapter: str | None = None
    dry_run: bool = False        # check everything, train 2 steps, write nothing
    echo: Callable = print
    dist: Dist | None = None     # the process group; None: from the launcher's environment


@dataclass(kw_only=True)
class TrainingPlan:
    """What `train` was asked to do and what setup decided, read by the later stages."""
    cfg: Config
    backend_name: str            # canonical name: mlx, torch
    caps: Capabilities
    backend_class: type          # the backend to instantiate (build loads the base with it)
    dist: Dist
    run: RunDir
    echo: Callable
    writes: bool                 # rank 0 of a real run writes the run directory, nobody else
    dry_run: bool
    resume: bool
    overwrite: bool
    init_adapter: str | None
    model_dir: Path
    tokenizer: object
    encoder: Tokenizer           # renders and tokenizes the examples
    truncations: dict            # per file ("training", "validation"): what max_length cut or dropped
    train_data: list
    valid_data: list
    steps: int
    warmup_steps: int            # warm-up steps of the schedule
    data_sha: dict


def setup(request: TrainRequest, run_dir: Path) -> TrainingPlan:
    """Stage 1, before the model loads: what the backend cannot do is refused, the data is read
    and tokenized, the run length fixed, the run directory and a resume checked."""
    cfg, backend, resume, init_adapter = request.cfg, request.backend, request.resume, request.init_adapter
    dry_run, overwrite, echo, dist = request.dry_run, request.overwrite, request.echo, request.dist
    backend_cls = get_backend(backend)
    backend = canonical(backend)
    caps = capabilities(backend)
    caps.check_training(cfg.training)
    scheme = caps.check_quantize(cfg.model.quantize)
    if init_adapter:  # before the data is read: an adapter continues on the base it was trained on
        check_adapter_scheme(init_adapter, scheme and scheme.name, f"model.quantize={cfg.model.quantize}", False)
    # Data parallel when launched by `train --nproc N`, torchrun or mlx.launch (1 process otherwise):
    # rank r runs micro-batches i with i % N == r, gradients and token counts are summed before the step.
    dist = dist or from_env(backend, cfg.training)
    writes = not dry_run and dist.is_main  # only rank 0 writes the run directory
    echo = echo if dist.is_main else (lambda *a, **k: None)
    run = RunDir(run_dir)
    model_dir = resolve_model(cfg.model.path)
    if init_adapter:
        check_init_base(init_adapter, model_dir, cfg.model.path)
    tokenizer = load_tokenizer(model_dir)
    tk, train_data, valid_data, truncations = prepare_data(cfg, tokenizer)
    t = cfg.training
    steps = 2 if dry_run else total_steps(cfg, len(train_data))
    _check_validation_settings(cfg, valid_data)
    check_installed(t.report_to if not dry_run else [])
    if writes:
        run.check_free(overwrite, resume)  # fail early; the directory is created once setup succeeded
        if resume:
            run.clean_stale()
    dist.barrier()  # other ranks read the checkpoints only after rank 0 has cleaned them
    data_sha = {"train": sha256_file(cfg.data.train), **({"valid": sha256_file(cfg.data.valid)} if cfg.data.valid else {})}
    if resume and run.checkpoint_dirs():  # before the model loads: what may change on --resume
        q = _check_resume(run, run.checkpoint_dirs()[-1], cfg, data_sha, steps, backend)
        if q != cfg.model.quantize:
            echo(f"[twinlora] note: resuming on {q}, the base this run was trained on ({cfg.model.quantize} "
                 f"now means {resolved_name(cfg.model.quantize, backend)} on {backend})")
            cfg.model.quantize = q
    return TrainingPlan(cfg=cfg, backend_name=backend, caps=caps, backend_class=backend_cls, dist=dist, run=run,
                        echo=echo, writes=writes, dry_run=dry_run, resume=resume, overwrite=overwrite,
                        init_adapter=init_adapter, model_dir=model_dir, tokenizer=tokenizer, encoder=tk,
                        truncations=truncations,
                        train_data=train_data, valid_data=valid_data, steps=steps,
                        warmup_steps=warmup_steps(steps, t.warmup_steps, t.warmup_ratio), data_sha=data_sha)


def check_init_base(init_adapter: str, model_dir: Path, model: str) -> None:
    """--init-adapter goes through the base-weights check of every adapter (common.adapters.base),
    before the model loads: LoRA weights trained on other base weights would start the run from
    a wrong point without any error."""
    from common.adapters.format import load_adapter
    from common.adapters.base import check_base
    load_adapter(Path(init_adapter))  # a missing or damaged adapter is reported as such first
    check_base(init_adapter, model_dir, model, where=f"--init-adapter {init_adapter}",
               fix="train on the base the adapter was trained on (--model / model.path), or without --init-adapter")


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


def prepare_data(cfg: Config, tokenizer) -> tuple[Tokenizer, list, list, dict]:
    """The training encoder, the encoded training and validation records, and each file's
    truncation counts (`{"training": ..., "validation": ...}`, for the one warning line per file)."""
    from common.data.manifest import resolve_data
    # data.train may be a `prepare` manifest.json: use its train/valid files (paths checked there)
    cfg.data.train, cfg.data.valid = resolve_data(cfg.data.train, cfg.data.valid)
    if not cfg.data.train:
        raise DataError("no training data given", where="data.train", fix="set data.train in the config or pass --data")
    d = cfg.data

    def encode(path: str) -> tuple[Tokenizer, list]:
        # one Tokenizer per file, so its truncation/drop counts are that file's
        if cfg.training.objective == "dpo":   # preference pairs, TRL's shapes and tokenization
            tk = PairTokenizer(tokenizer, d.template, d.system_prompt, d.max_length, d.too_long)
            return tk, tk.encode_all(load_pairs(path), path)
        tk = Tokenizer(tokenizer, d.template, d.system_prompt, d.mask_prompt, d.max_length, d.too_long, d.train_on)
        return tk, tk.encode_all(load_examples(path), path)

    tk, train = encode(d.train)
    tk_valid, valid = encode(d.valid) if d.valid else (None, [])
    return tk, train, valid, {"training": tk.stats, "validation": tk_valid.stats if tk_valid else {}}


def written_by(run: RunDir, state: dict) -> str | None:
    """The backend that wrote a checkpoint: its trainer state, or (older checkpoints) the run's last
    start/resume event in log.jsonl."""
    if state.get("backend"):
        return state["backend"]
    events = [r.get("backend") for r in run.read_log() if r.get("event") in ("start", "resume") and r.get("backend")]
    return events[-1] if events else None


def _check_resume(run: RunDir, ckpt: Path, cfg: Config, data_sha: dict, steps: int, backend: str) -> str | None:
    """The checkpoint's config (or the run's config.yaml for checkpoints that lack it) against this
    one, and the backend that wrote it against this one (`check_backend_switch`); returns the
    model.quantize the run resumes with (`resumed_quantize`)."""
    import json

    import yaml
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return cfg.model.quantize  # load_checkpoint reports the damaged checkpoint
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
    wrote, q = written_by(run, state), cfg.model.quantize
    record = {**state, "config": saved if isinstance(saved, dict) else state.get("config")}
    check_backend_switch(ckpt, wrote, backend, q, recorded_scheme(record, wrote) if wrote else None)
    return resumed_quantize(ckpt, record, wrote, backend, q)


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
