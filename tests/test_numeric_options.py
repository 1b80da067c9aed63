"""Every numeric option of every command, fed its boundary values (-1, 0, 10**12, nan, inf, abc):
refused at parsing by the range declared with the option (click usage error, exit 2, no traceback),
or refused in one line by the shared check that owns the range (sampling, the config schema), or
accepted with a meaning its help text states. Cheap: nothing loads a model, parsing fails before
the command runs."""
from __future__ import annotations

import math

import click
import pytest

import cli
from helpers import run_cli

VALUES = ("-1", "0", str(10 ** 12), "nan", "inf", "abc")

# 0 accepted: the words in the option's help that say what it means
ZERO = {("bench", "--warmup"): "0: none", ("demo", "--eval-items"): "0 = skip", ("study", "--variability-items"): "0: skip",
        ("generate", "--temperature"): "0 = greedy", ("study", "--failure-threshold"): "0: none",
        ("serve", "--port"): "0: any free port", ("serve", "--queue-size"): "0: none wait"}
ZERO.update({(c, "--seed"): "Seed" for c in ("prepare", "eval", "generate", "study", "train")})
# 10**12 accepted: a budget that only takes as long as asked, or a count clipped to what the data holds
HUGE = {("bench", "--steps"), ("bench", "--warmup"), ("bench", "--repeats"), ("bench", "--mem-limit-gib"),
        ("bench", "--budget-min"), ("demo", "--steps"), ("demo", "--eval-items"), ("eval", "--limit"),
        ("eval", "--batch-size"), ("eval", "--max-new-tokens"), ("generate", "--max-new-tokens"),
        ("parity", "--max-new-tokens"), ("parity", "--tol-logit"), ("parity", "--tol-kl"), ("sweep", "--limit"),
        ("sweep", "--max-new-tokens"), ("study", "--curve-items"), ("study", "--test-items"),
        ("study", "--max-new-tokens"), ("study", "--variability-items"), ("study", "--curve-every"),
        ("train", "--steps"), ("train", "--epochs"),
        ("serve", "--max-tokens"),  # capped by the context
        ("train", "--batch-size")}  # a micro-batch holds at most the whole data set (common.training.batching.epoch_order)


def _sampling(option, value):
    from common.training.sampling import Sampling
    kw = {"temperature": 0.0, "top_p": 1.0, "seed": 0, option.lstrip("-").replace("-", "_"): value}
    Sampling(**kw).check()


def _config(option, value):
    cli.build_config(None, [], **{option.lstrip("-").replace("-", "_"): value})


# options whose range lives in one shared check (so YAML, --set and the flag agree); called with the parsed value
CHECKED = {("generate", "--temperature"): _sampling, ("generate", "--top-p"): _sampling,
           **{("train", f"--{k}"): _config for k in ("steps", "epochs", "lr", "batch-size", "rank", "seed")}}


def numeric_options():
    for name, cmd in sorted(cli.cli.commands.items()):
        for p in cmd.params:
            if isinstance(p, click.Option) and isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType)):
                yield name, cmd, p


def _required(cmd) -> list[str]:
    """Dummy values for the command's required arguments and options (parsing only)."""
    args = []
    for p in cmd.params:
        if not p.required:
            continue
        value = p.type.choices[0] if isinstance(p.type, click.Choice) else "x"
        args += [value] if isinstance(p, click.Argument) else [p.opts[0], value]
    return args


CASES = [(name, p.opts[0], v) for name, _, p in numeric_options() for v in VALUES]


def test_every_numeric_option_is_covered():
    assert len({(c, o) for c, o, _ in CASES}) >= 40


@pytest.mark.parametrize("command,option,value", CASES, ids=[f"{c} {o} {v}" for c, o, v in CASES])
def test_boundary_value(command, option, value):
    from common.errors import UserError
    cmd = cli.cli.commands[command]
    param = next(p for p in cmd.params if p.opts[0] == option)
    try:
        ctx = cmd.make_context(command, [*_required(cmd), option, value])
    except click.UsageError:
        r = run_cli(command, *_required(cmd), option, value)  # the same refusal through the CLI
        assert r.exit_code == 2 and "Traceback" not in r.output and "Invalid value for" in r.output, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit)
        return
    parsed = ctx.params[param.name]
    check = CHECKED.get((command, option))
    if check is not None:
        try:
            check(option, parsed)
        except UserError as exc:
            assert "\n" not in str(exc) and "Traceback" not in str(exc)
            return
    if value in ("-1", "nan", "inf", "abc"):
        pytest.fail(f"{command} {option} {value} is accepted as {parsed!r}: declare a range with a minimum "
                    "(cli_options.Finite for floats)")
    if value == "0":
        assert (command, option) in ZERO, f"{command} {option} 0 is accepted: give it a minimum of 1, or say in its help what 0 means"
        words = ZERO[(command, option)]
        assert words is None or words in (param.help or ""), f"{command} {option}: its help should say {words!r}"
    if value == str(10 ** 12):
        assert (command, option) in HUGE, f"{command} {option} 10**12 is accepted: give it a maximum"
        assert math.isfinite(parsed)


# ------------------------------------------------------------------ config keys (YAML and --set)
# 0 accepted: the words in the key's help (config-help) that say what it means
ZERO_KEYS = {"training.save_every": "0 = only at the end", "training.eval_every": "0 = only at the end",
             "training.seed": "Seed", "training.warmup_ratio": None, "training.warmup_steps": "wins over warmup_ratio when > 0",
             "training.min_lr_ratio": None, "training.weight_decay": None, "lora.dropout": None,
             "training.early_stopping_min_delta": None, "training.keep_checkpoints": "0 = keep all"}
HUGE_KEYS = {"training.steps", "training.epochs", "training.batch_size", "training.save_every", "training.eval_every",
             "training.log_every", "training.keep_checkpoints", "training.warmup_steps", "training.grad_accumulation",
             "training.weight_decay", "training.max_grad_norm", "training.early_stopping_patience",
             "training.early_stopping_min_delta", "data.max_length", "lora.alpha", "lora.layers", "lora.scale"}


def numeric_keys():
    from common.config.schema import SECTIONS, schema_field
    from dataclasses import fields
    for sec, cls in SECTIONS.items():
        for f in fields(cls):
            key = f"{sec}.{f.name}"
            if schema_field(key)[1] is not None:
                yield key


KEY_CASES = [(k, v) for k in numeric_keys() for v in VALUES]


@pytest.mark.parametrize("key,value", KEY_CASES, ids=[f"{k} {v}" for k, v in KEY_CASES])
def test_config_key_boundary_value(key, value):
    from common.config.schema import load_config, parse_set, schema_field
    from common.errors import ConfigError
    try:
        cfg = load_config(overrides=parse_set([f"{key}={value}"]))
    except ConfigError as exc:
        assert "\n" not in str(exc) and key in str(exc), str(exc)
        return
    sec, name = key.split(".")
    parsed = getattr(getattr(cfg, sec), name)
    if value in ("-1", "nan", "inf", "abc"):
        pytest.fail(f"{key}={value} is accepted as {parsed!r}: add its range to common/config/schema.py _validate")
    if value == "0":
        assert key in ZERO_KEYS, f"{key}=0 is accepted: refuse it, or say in its help what 0 means"
        words = ZERO_KEYS[key]
        assert words is None or words in schema_field(key)[0], f"{key}: its help should say {words!r}"
    if value == str(10 ** 12):
        assert key in HUGE_KEYS, f"{key}=10**12 is accepted: give it a maximum"


def test_dpo_keys_are_in_the_table():
    """DPO's number (training.beta) goes through the config-key cases above like every numeric key."""
    assert "training.beta" in set(numeric_keys())


# ------------------------------------------------------------------ the choices of preference tuning
CHOICE_KEYS = {"training.objective": ("sft", "dpo"), "training.loss_type": ("sigmoid", "ipo")}


@pytest.mark.parametrize("key,value", [(k, v) for k in CHOICE_KEYS for v in (*VALUES, "", "DPO", "null")])
def test_choice_key_boundary_value(key, value):
    """A value outside the key's choices is one ConfigError naming the key and the choices."""
    from common.config.schema import load_config, parse_set
    from common.errors import ConfigError
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=parse_set([f"{key}={value}"]))
    assert "\n" not in str(exc.value) and key in str(exc.value) and all(c in str(exc.value) for c in CHOICE_KEYS[key])


# ------------------------------------------------------------------ prepare pairs: its numeric recipe options
PAIR_OPTIONS = ("limit", "max_new_tokens")


@pytest.mark.parametrize("option,value", [(o, v) for o in PAIR_OPTIONS for v in (*VALUES, ".nan", ".inf", "1.5", "",
                                                                                    "true")])
def test_pair_option_boundary_value(option, value, chat_jsonl, tmp_path):
    """Refused in one line before any model loads (jobs.pairs.pair_options), or accepted with the
    meaning the recipe states: a huge limit takes every item, a huge budget is capped by the context."""
    from common.config.schema import parse_set
    from common.errors import ConfigError
    from error_rows import expect_error
    from jobs.pairs import pair_options
    try:
        parsed = pair_options(parse_set([f"{option}={value}"]))
    except ConfigError as exc:
        r = run_cli("prepare", "pairs", chat_jsonl, "--out", tmp_path / "pairs", "--option", f"{option}={value}")
        line = expect_error(r, f"prepare pairs --option {option}: {option} must be a whole number of at least 1")
        assert line == f"error: {exc}" and not (tmp_path / "pairs").exists() and "[eval]" not in r.output
        return
    assert value == str(10 ** 12) and parsed[option] == 10 ** 12, (option, value, parsed)


# ------------------------------------------------------------------ study: its lists of numbers
LIST_VALUES = (*VALUES, "", "1.5", "0,0", "2,,3", "4,-1")
# accepted: what the study runs (shots: 0 is the zero-shot baseline every study has; ranks: "" none)
LIST_MEANING = {("--shots", "0"): [], ("--shots", ""): [], ("--shots", "0,0"): [], ("--shots", "2,,3"): [2, 3],
                ("--ranks", ""): [], ("--ranks", "2,,3"): [2, 3]}


@pytest.fixture
def study_config(tiny_model, tmp_path):
    from common.config.schema import dump_yaml
    from helpers import chat_rows, tiny_config, write_jsonl
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows(12))
    test = write_jsonl(tmp_path / "test.jsonl", chat_rows(16)[12:])
    cfg = tiny_config(tiny_model, train, tmp_path / "unused", data={"valid": str(test), "test": str(test)})
    (tmp_path / "study.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    return tmp_path / "study.yaml"


@pytest.mark.parametrize("option,value", [(o, v) for o in ("--shots", "--ranks") for v in LIST_VALUES])
def test_study_list_boundary_value(option, value, study_config, tmp_path, monkeypatch):
    """Through the CLI, with the study's long work replaced by a recorder: every value is refused
    in one line before any stage runs, or planned with its documented meaning."""
    import jobs.study
    from error_rows import expect_error
    planned = []
    monkeypatch.setattr(jobs.study, "_run_planned", lambda plan, echo: planned.append(plan) or {})
    out = tmp_path / "study"
    r = run_cli("study", "--config", study_config, "--backend", "torch", "--no-forgetting", "--output", out,
                option, value)
    if (option, value) not in LIST_MEANING:
        expect_error(r, option)
        assert not planned and not out.exists()
        return
    assert r.exit_code == 0, r.output
    assert getattr(planned[0], option.lstrip("-")) == LIST_MEANING[(option, value)]


# ------------------------------------------------------------------ serve: its adapter names and directories
@pytest.mark.parametrize("spec", ["", "=", "x=", ".x=DIR", "-x=DIR", "a b=DIR", "x=MISSING", "MISSING", "x=MODEL",
                                  "x=DIR/file"])
def test_serve_adapter_boundary_value(spec, tiny_model, tmp_path):
    """A bad --adapter of serve is one line and exit 2 before anything is served."""
    from error_rows import expect_error
    (tmp_path / "file").write_text("x")
    spec = spec.replace("MISSING", str(tmp_path / "missing")).replace("MODEL", str(tiny_model)).replace(
        "DIR", str(tmp_path))
    r = run_cli("serve", "--model", tiny_model, "--port", "0", "--adapter", spec)
    expect_error(r)
    assert "serving" not in r.output
