"""docs/errors.md rows about configs: the schema, values, and configs written with other tools' names (issue 16).

Each row is registered under its id by `@row`; tests/test_errors.py runs every row through the
same checks (one `error:` line, exit 2, no traceback, the documented pattern)."""
from __future__ import annotations


from error_rows import expect_error, refused, row, train_cli, train_config, write
from helpers import write_jsonl


# ---------------------------------------------------------------- config

@row("E12")
def config_unknown_key(ctx):
    cfg = write(ctx.tmp / "c.yaml", "lora:\n  rnak: 8\n")
    r = train_config(ctx, cfg)
    return refused(ctx, r, str(cfg), "unknown key 'lora.rnak', did you mean lora.rank?", "valid in 'lora': rank",
                        "config-help")


@row("E13")
def config_wrong_type(ctx):
    return refused(ctx, train_cli(ctx, "--set", "training.batch_size=two"),
                        "training.batch_size: expected an integer, got 'two'")


@row("E14")
def negative_lr(ctx):
    return refused(ctx, train_cli(ctx, "--set", "training.lr=-1"), "training.lr must be > 0")


@row("E164")
def seed_out_of_range(ctx):
    """Seeds, ranks, eps and checkpoint counts have their ranges in the schema's one check (also for --seed)."""
    for args, needle in ((("--set", "training.keep_checkpoints=-1"), "training.keep_checkpoints must be >= 0"),
                         (("--rank", str(10 ** 12)), "lora.rank must be in 1..4096"),
                         (("--set", "training.adam_eps=1e12"), "training.adam_eps=1e+12 would damp")):
        refused(ctx, train_cli(ctx, *args), needle)
    return refused(ctx, train_cli(ctx, "--seed", "-1"), "flags: training.seed must be in 0..4294967295")


@row("E15")
def yaml_syntax_error(ctx):
    cfg = write(ctx.tmp / "c.yaml", "training:\n  steps: 2\n  lr: [1e-4\nlora:\n  rank: 4\n")
    r = train_config(ctx, cfg)
    return refused(ctx, r, f"{cfg}:4:", "not valid YAML")


@row("E169")
def yaml_section_given_twice(ctx):
    """PyYAML keeps the second `training:` and drops the first without a word."""
    cfg = write(ctx.tmp / "c.yaml", "training:\n  lr: 0.01\nlora:\n  rank: 4\ntraining:\n  steps: 2\n")
    line = refused(ctx, train_config(ctx, cfg), f"{cfg}:5:", "key 'training' is given twice", "(lines 1 and 5)")
    dup = write(ctx.tmp / "d.yaml", "training:\n  lr: 0.01\n  steps: 2\n  lr: 0.02\n")  # inside a section too
    refused(ctx, train_config(ctx, dup), f"{dup}:4:", "key 'lr' is given twice", "(lines 2 and 4)")
    anchors = write(ctx.tmp / "e.yaml", "base: &b {lr: 0.01}\ntraining:\n  <<: *b\n  steps: 2\n")
    from common.errors import ConfigError
    try:  # YAML merge keys are not duplicates (the file is refused later for its unknown key 'base')
        from common.config.schema import load_config
        load_config(anchors)
    except ConfigError as exc:
        assert "given twice" not in str(exc) and "unknown key 'base'" in str(exc), exc
    return line


@row("E16")
def config_file_missing(ctx):
    cfg = ctx.tmp / "nope.yaml"
    r = train_config(ctx, cfg)
    return expect_error(r, str(cfg), "config file not found")


@row("E17")
def set_without_equals(ctx):
    return expect_error(train_cli(ctx, "--set", "training.lr"), "--set 'training.lr' is not KEY=VALUE")


@row("E18")
def value_not_allowed(ctx):
    return expect_error(train_cli(ctx, "--set", "training.schedule=cosin"),
                        "training.schedule: 'cosin' is not one of 'cosine', 'linear', 'constant'")


@row("E19")
def template_file_missing(ctx):
    return refused(ctx, train_cli(ctx, "--set", "data.template=nope.jinja"), "nope.jinja", "template file not found")


# ---------------------------------------------------------------- training UX (issue 16)

def _foreign_config(ctx, name: str, text: str, *needles) -> str:
    """A config written in another tool's key names, refused naming ours."""
    cfg = write(ctx.tmp / name, text)
    return refused(ctx, train_config(ctx, cfg), str(cfg), *needles)


@row("E110")
def trl_style_config(ctx):
    return _foreign_config(ctx, "trl.yaml", "learning_rate: 2.0e-4\nnum_train_epochs: 3\nper_device_train_batch_size: 4\n"
                           "lora_r: 16\nmax_seq_length: 512\n", "unknown key 'learning_rate', did you mean training.lr?",
                        "unknown key 'num_train_epochs', did you mean training.epochs?",
                        "unknown key 'per_device_train_batch_size', did you mean training.batch_size?",
                        "unknown key 'lora_r', did you mean lora.rank?",
                        "unknown key 'max_seq_length', did you mean data.max_length?", "rename the keys as suggested")


@row("E111")
def mlx_lm_style_config(ctx):
    return _foreign_config(ctx, "mlx.yaml", "iters: 600\nbatch_size: 4\nnum_layers: 8\n"
                           "lora_parameters: {rank: 8, scale: 20.0, dropout: 0.0}\n", "unknown key 'iters', did you mean training.steps?",
                        "unknown key 'batch_size', did you mean training.batch_size?",
                        "unknown key 'num_layers', did you mean lora.layers?",
                        "lora.scale (alpha = scale × rank)")


@row("E112")
def scale_and_alpha_disagree(ctx):
    return refused(ctx, train_cli(ctx, "--set", "lora.scale=20", "--set", "lora.alpha=16", "--set", "lora.rank=8"),
                        "lora.scale=20 and lora.alpha=16 disagree", "scale = alpha/rank = 2")


@row("E113")
def early_stopping_without_validation(ctx):
    return refused(ctx, train_cli(ctx, "--set", "training.early_stopping_patience=2", "--set", "training.eval_every=1"),
                        "training.early_stopping_patience: early stopping needs validation data", "--valid")


@row("E114")
def early_stopping_without_eval_every(ctx):
    return refused(ctx, train_cli(ctx, "--valid", ctx.data, "--set", "training.early_stopping_patience=2"),
                        "training.eval_every is 0", "set training.eval_every")


@row("E115")
def tracker_not_installed(ctx):
    ctx.mp.setattr("importlib.util.find_spec", lambda name, *a: None)
    return refused(ctx, train_cli(ctx, "--set", "training.report_to=[csv,wandb]"),
                        "training.report_to: wandb is not installed", "pip install wandb")


@row("E116")
def tracker_unknown(ctx):
    return refused(ctx, train_cli(ctx, "--set", "training.report_to=tensorbord"),
                        "training.report_to: 'tensorbord' is not one of csv, tensorboard, wandb, mlflow, none")


@row("E117")
def data_folder_without_train_file(ctx):
    folder = ctx.tmp / "data"
    write(folder / "training.jsonl", "{}\n")
    return refused(ctx, train_cli(ctx, data=folder), str(folder), "no train.jsonl", "as mlx-lm expects")


@row("E118")
def template_changes_earlier_turns(ctx):
    # a template that shortens earlier assistant turns (as reasoning templates strip their thinking)
    tmpl = write(ctx.tmp / "strip.jinja", "{% for m in messages %}<|im_start|>{{ m.role }}\n"
                 "{% if m.role == 'assistant' and not loop.last %}(earlier answer){% else %}{{ m.content }}{% endif %}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    data = write_jsonl(ctx.tmp / "mt.jsonl", [{"messages": [
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]}])
    line = expect_error(train_cli(ctx, "--set", f"data.template={tmpl}", data=data), f"{data}:1:",
                        "renders assistant turn messages[1] differently", "data.train_on: last")
    assert not ctx.out.exists()
    # the fix works: only the last turn is trained
    r = train_cli(ctx, "--set", f"data.template={tmpl}", "--set", "data.train_on=last", data=data)
    assert r.exit_code == 0, r.output
    return line
