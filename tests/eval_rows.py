"""docs/errors.md rows about eval, compare, generate and study.

Each row is registered under its id by `@row`; tests/test_errors.py runs every row through the
same checks (one `error:` line, exit 2, no traceback, the documented pattern)."""
from __future__ import annotations

import json
from pathlib import Path

from error_rows import expect_error, refused, row, write
from helpers import run_cli, tiny_config


# ---------------------------------------------------------------- eval / compare

@row("E53")
def eval_unknown_metric(ctx):
    r = run_cli("eval", "--backend", "torch", "--model", ctx.model, "--data", ctx.data, "--output", ctx.out,
                "--metrics", "rouge,accuracy")
    line = expect_error(r, "unknown metric(s): accuracy", "rouge")
    assert not ctx.out.exists() and "[eval]" not in r.output  # refused before generating anything
    return line


@row("E54")
def compare_without_metrics(ctx):
    a, b = ctx.tmp / "eval-a", ctx.tmp / "eval-b"
    a.mkdir()
    b.mkdir()
    write(a / "metrics.json", json.dumps({"metrics": {"rouge1_f": 0.5}}))
    return refused(ctx, run_cli("compare", a, b, "--output", ctx.out), str(b), "no metrics.json")


@row("E171")
def eval_record_past_the_context(ctx):
    """eval (and prepare pairs, the study's variability answers) fit each prompt to the context by
    generate's check (E168), before the first answer."""
    data = ctx.tmp / "long.jsonl"
    write(data, json.dumps({"prompt": "mot " * 600, "completion": "R."}) + "\n")
    r = run_cli("eval", "--backend", "torch", "--model", ctx.model, "--data", data, "--output", ctx.out,
                "--metrics", "rouge")
    line = refused(ctx, r, f"{data}:1: the prompt is", "the model's context holds 512")
    assert "[eval] 1/1" not in r.output
    return line


# ---------------------------------------------------------------- outputs, eval, generate (E120-E129)

def _plain_mlx_lm_adapter(ctx, model=None) -> Path:
    """The trained adapter as plain `mlx_lm lora` writes it: mlx files, no twinlora block, `model`."""
    src = ctx.tmp / "mlx-lm"
    assert run_cli("convert", ctx.adapter_copy(), src, "--to", "mlx").exit_code == 0
    cfg = json.loads((src / "adapter_config.json").read_text())
    del cfg["twinlora"]
    if model is not None:
        cfg["model"] = model
    write(src / "adapter_config.json", json.dumps(cfg))
    return src


@row("E120")
def mlx_lm_adapter_without_base(ctx):
    src = _plain_mlx_lm_adapter(ctx)
    line = expect_error(run_cli("convert", src, ctx.out, "--to", "common"), "does not name its base model", "--base")
    assert not ctx.out.exists()
    assert run_cli("convert", src, ctx.out, "--to", "common", "--base", ctx.model).exit_code == 0
    return line


@row("E121")
def mlx_lm_adapter_base_missing(ctx):
    src = _plain_mlx_lm_adapter(ctx, model="../checkpoints/gone")
    return refused(ctx, run_cli("convert", src, ctx.out, "--to", "common"), "'../checkpoints/gone'", "--base")


@row("E122")
def generate_without_prompt(ctx):
    r = run_cli("generate", "--backend", "torch", "--model", ctx.model)
    return expect_error(r, "nothing to answer", "--chat")


@row("E123")
def generate_top_p_out_of_range(ctx):
    r = run_cli("generate", "--backend", "torch", "--model", ctx.model, "-p", "hi", "-t", "0.7", "--top-p", "0")
    line = expect_error(r, "--top-p", "(0, 1]")
    assert ">>>" not in r.output  # refused before loading the model
    return line


@row("E124")
def chat_with_two_adapters(ctx):
    a = ctx.adapter_copy()
    r = run_cli("generate", "--backend", "torch", "--model", ctx.model, "--chat", "--adapter", f"a={a}",
                "--adapter", f"b={a}")
    return expect_error(r, "--chat talks with one model")


@row("E168")
def prompt_past_the_context(ctx):
    """The tiny model's context is 512 tokens: a 600-word prompt is refused before any answer."""
    r = run_cli("generate", "--backend", "torch", "--model", ctx.model, "-p", "hi", "-p", "mot " * 600)
    line = expect_error(r, "--prompt: the prompt is", "holds 512")
    assert ">>>" not in r.output  # not even the short first prompt was answered
    return line


# ---------------------------------------------------------------- study (E150-E159)

def _study_config(ctx, **data) -> Path:
    from common.config.schema import dump_yaml
    cfg = tiny_config(ctx.model, ctx.data, ctx.tmp / "unused", data={"valid": str(ctx.data), **data})
    return write(ctx.tmp / "study.yaml", dump_yaml(cfg))


@row("E150")
def study_without_test_split(ctx):
    r = run_cli("study", "--config", _study_config(ctx), "--output", ctx.out)
    line = expect_error(r, "data.test", "held-out test split")
    assert not ctx.out.exists() and "[study]" not in r.output
    return line


@row("E151")
def study_with_other_settings(ctx):
    from common.runs.io import write_json
    from jobs.study_plan import SETTINGS, plan_study
    config = _study_config(ctx, test=str(ctx.data))
    earlier = plan_study(config, [], ["torch"], ctx.out)  # as a first `study` run records it
    write_json(ctx.out / SETTINGS, earlier.settings())
    before = (ctx.out / SETTINGS).read_bytes()
    r = run_cli("study", "--config", config, "--backend", "torch", "--output", ctx.out, "--set", "training.lr=0.5")
    line = expect_error(r, str(ctx.out), "other settings (differs in config)")
    assert (ctx.out / SETTINGS).read_bytes() == before and sorted(p.name for p in ctx.out.iterdir()) == [SETTINGS]
    return line


@row("E152")
def study_curve_beyond_budget(ctx):
    r = run_cli("study", "--config", _study_config(ctx, test=str(ctx.data)), "--output", ctx.out, "--curve-every", "9")
    return refused(ctx, r, "--curve-every 9", "training.steps (4)")


@row("E153")
def study_more_shots_than_training_examples(ctx):
    r = run_cli("study", "--config", _study_config(ctx, test=str(ctx.data)), "--output", ctx.out, "--shots", "0,40")
    return refused(ctx, r, "--shots", "40 shots asked for", "use at most")


@row("E154")
def study_shots_not_a_list(ctx):
    r = run_cli("study", "--config", _study_config(ctx, test=str(ctx.data)), "--output", ctx.out, "--shots", "0,three")
    return refused(ctx, r, "--shots", "not a comma list of whole numbers")


@row("E155")
def study_rank_out_of_range(ctx):
    r = run_cli("study", "--config", _study_config(ctx, test=str(ctx.data)), "--output", ctx.out, "--ranks", "4,0")
    return refused(ctx, r, "--ranks", "value(s) 0 out of range")


@row("E156")
def study_general_material_damaged(ctx):
    import shutil
    import common.evaluation.forgetting as fg
    broken = ctx.tmp / "general"
    shutil.copytree(fg.GENERAL_DIR, broken)
    lines = (broken / "mcq.jsonl").read_text(encoding="utf-8").splitlines()
    lines[2] = json.dumps({**json.loads(lines[2]), "answer": 4})
    write(broken / "mcq.jsonl", "\n".join(lines) + "\n")
    ctx.mp.setattr(fg.load_general, "__defaults__", (broken,))
    r = run_cli("study", "--config", _study_config(ctx, test=str(ctx.data)), "--output", ctx.out)
    return refused(ctx, r, f"{broken / 'mcq.jsonl'}:3", '"answer"', "restore data/general")
