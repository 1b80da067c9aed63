"""docs/errors.md rows about data: data files, prepared data (manifest), prepare recipes.

Each row is registered under its id by `@row`; tests/test_errors.py runs every row through the
same checks (one `error:` line, exit 2, no traceback, the documented pattern)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from error_rows import bad_data, expect_error, refused, row, train_cli, write
from helpers import run_cli, write_jsonl


# ---------------------------------------------------------------- data files

@row("E01")
def malformed_jsonl_line(ctx):
    return bad_data(ctx, '{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n', ":2:", "malformed JSON")


@row("E02")
def wrong_field_names(ctx):
    return bad_data(ctx, '{"question": "a", "answer": "b"}\n', ":1:", "no known shape", "question")


@row("E03")
def data_file_missing(ctx):
    missing = ctx.tmp / "nope.jsonl"
    return refused(ctx, train_cli(ctx, data=missing), str(missing), "data file not found")


@row("E04")
def empty_data_file(ctx):
    return bad_data(ctx, "\n\n", "", "dataset is empty", name="empty.jsonl")


@row("E05")
def everything_dropped_by_max_length(ctx):
    return refused(ctx, train_cli(ctx, "--set", "data.too_long=drop", "--set", "data.max_length=8"),
                        str(ctx.data), "dataset is empty after tokenization")


@row("E06")
def sample_longer_than_max_length_error(ctx):
    return refused(ctx, train_cli(ctx, "--set", "data.too_long=error", "--set", "data.max_length=16"),
                        f"{ctx.data}:1:", "longer than data.max_length=16", "data.too_long")


@row("E07")
def sample_longer_than_max_length_truncate_warns(ctx):
    long = " ".join(["Le salarié a droit à un congé payé."] * 12)
    data = write_jsonl(ctx.tmp / "long.jsonl", [{"prompt": f"Q{i}", "completion": long} for i in range(3)])
    r = train_cli(ctx, "--set", "data.max_length=32", data=data)
    assert r.exit_code == 0, r.output
    lines = [l for l in r.output.splitlines() if "warning" in l]
    assert len(lines) == 1 and "3 of 3 training examples truncated to max_length=32; 3 lose completion" in lines[0], r.output
    assert (ctx.out / "adapter").is_dir()
    return lines[0]


@row("E08")
def unknown_role(ctx):
    data = write_jsonl(ctx.tmp / "bad.jsonl", [{"messages": [{"role": "robot", "content": "hi"},
                                                       {"role": "assistant", "content": "yo"}]}])
    return refused(ctx, train_cli(ctx, data=data), f"{data}:1:", 'unknown role "robot"', "system, user, assistant")


@row("E09")
def field_of_wrong_type(ctx):
    return bad_data(ctx, '{"instruction": "a", "output": 3}\n', ":1:", '"output" must be a string')


@row("E10")
def not_utf8(ctx):
    return bad_data(ctx, '{"prompt": "é", "completion": "à"}\n'.encode("latin-1"), "", "not UTF-8", name="latin1.jsonl")


@row("E11")
def no_training_data(ctx):
    r = run_cli("train", "--backend", "torch", "--model", ctx.model, "--output", ctx.out)
    return refused(ctx, r, "data.train", "no training data")


# ---------------------------------------------------------------- prepared data (manifest)

def _manifest(ctx, files: dict) -> Path:
    d = ctx.tmp / "prepared"
    d.mkdir(exist_ok=True)
    shutil.copy(ctx.data, d / "train.jsonl")
    return write(d / "manifest.json", json.dumps({"recipe": "jsonl", "files": files}))


@row("E45")
def manifest_path_escapes(ctx):
    secret = write(ctx.tmp / "secret" / "train.jsonl", ctx.data.read_text())
    assert secret.is_file()
    m = _manifest(ctx, {"../secret/train.jsonl": {"rows": 12}})
    return refused(ctx, train_cli(ctx, data=m), str(m), "'../secret/train.jsonl' escapes the manifest's directory")


@row("E46")
def manifest_absolute_path(ctx):
    m = _manifest(ctx, {str(ctx.data): {"rows": 12}})
    return refused(ctx, train_cli(ctx, data=m), str(m), "is absolute")


@row("E47")
def manifest_lists_missing_file(ctx):
    m = _manifest(ctx, {"train.jsonl": {"rows": 12}, "valid.jsonl": {"rows": 3}})
    return refused(ctx, train_cli(ctx, data=m), str(m.parent / "valid.jsonl"), "the file is missing")


# ---------------------------------------------------------------- prepare recipes

@row("E48")
def unknown_recipe(ctx):
    return expect_error(run_cli("prepare", "alpaca", ctx.data, "--out", ctx.out), 'unknown recipe "alpaca"',
                        "jsonl, legi, legi-classify, slds, squad")


@row("E49")
def legi_input_not_json(ctx):
    bad = write(ctx.tmp / "code.json", '{"type": "code",\n  "data": oops}\n')
    return refused(ctx, run_cli("prepare", "legi", bad, "--out", ctx.out), f"{bad}:2", "not valid JSON")


@row("E50")
def legi_input_not_legi(ctx):
    bad = write(ctx.tmp / "code.json", '{"articles": []}\n')
    return refused(ctx, run_cli("prepare", "legi", bad, "--out", ctx.out), str(bad), "not legi-data JSON")


@row("E51")
def squad_missing_field(ctx):
    bad = write(ctx.tmp / "dev.json", json.dumps({"data": [{"title": "T", "paragraphs": [
        {"context": "c", "qas": [{"id": "q1", "answers": [], "is_impossible": True}]}]}]}))
    return refused(ctx, run_cli("prepare", "squad", bad, "--out", ctx.out),
                        f"{bad}:data[0].paragraphs[0].qas[0]", 'missing "question"')


@row("E52")
def unknown_recipe_option(ctx):
    return expect_error(run_cli("prepare", "jsonl", ctx.data, "--out", ctx.out, "--option", "ratio=0.5"),
                        "unknown option(s) for recipe jsonl: ratio", "ratios")


# ---------------------------------------------------------------- preference pairs (training.objective: dpo)

def _pairs(ctx, rows, *extra):
    """`train --set training.objective=dpo` on a file of `rows`, refused with line 1 named."""
    data = write_jsonl(ctx.tmp / "pairs.jsonl", rows)
    return refused(ctx, train_cli(ctx, "--set", "training.objective=dpo", *extra, data=data), f"{data}:1:")


@row("E200")
def pair_missing_a_side(ctx):
    return _pairs(ctx, [{"prompt": "Q?", "chosen": "A."}])


@row("E201")
def pair_sides_identical(ctx):
    return _pairs(ctx, [{"prompt": "Q?", "chosen": "A.", "rejected": "A."}])


@row("E202")
def pair_empty_completion(ctx):
    return _pairs(ctx, [{"prompt": "Q?", "chosen": "A.", "rejected": "  "}])


@row("E203")
def pair_prompt_alone_over_max_length(ctx):
    return _pairs(ctx, [{"prompt": "Le salarié a droit à un congé payé. " * 8, "chosen": "Oui.", "rejected": "Non."}],
                  "--set", "data.max_length=16")


@row("E204")
def pair_mixes_text_and_messages(ctx):
    return _pairs(ctx, [{"prompt": [{"role": "user", "content": "Q?"}], "chosen": "A.", "rejected": "B."}])


@row("E205")
def sft_record_in_a_dpo_run(ctx):
    return _pairs(ctx, [{"prompt": "Q?", "completion": "A."}])


@row("E206")
def pair_in_an_sft_run(ctx):
    data = write_jsonl(ctx.tmp / "pairs.jsonl", [{"prompt": "Q?", "chosen": "A.", "rejected": "B."}])
    return refused(ctx, train_cli(ctx, data=data), f"{data}:1:", "training.objective: dpo")


@row("E207")
def implicit_pair_without_shared_prompt(ctx):
    return _pairs(ctx, [{"chosen": [{"role": "user", "content": "Q?"}], "rejected": [{"role": "user", "content": "R?"}]}])


@row("E208")
def dpo_with_packed_batching(ctx):
    data = write_jsonl(ctx.tmp / "pairs.jsonl", [{"prompt": "Q?", "chosen": "A.", "rejected": "B."}])
    return refused(ctx, train_cli(ctx, "--set", "training.objective=dpo", "--set", "training.batching=packed", data=data),
                   "training.batching: packed")


@row("E209")
def dpo_resume_with_another_reference(ctx):
    data = write_jsonl(ctx.tmp / "pairs.jsonl", [{"prompt": f"Q{i}?", "chosen": f"A{i}.", "rejected": "B."} for i in range(4)])
    args = ("--set", "training.objective=dpo", "--set", "training.save_every=1", "--set", "lora.target_modules=all-linear")
    r = train_cli(ctx, *args, "--init-adapter", ctx.adapter_copy(), data=data, steps="2")
    assert r.exit_code == 0, r.output
    before = (ctx.out / "adapter" / "adapter_model.safetensors").read_bytes()
    line = expect_error(train_cli(ctx, *args, "--resume", data=data, steps="3"), "reference")
    assert (ctx.out / "adapter" / "adapter_model.safetensors").read_bytes() == before
    return line


@row("E175")
def pairs_option_out_of_range(ctx):
    """prepare pairs' counts are checked before any model loads (jobs.pairs.pair_options)."""
    r = run_cli("prepare", "pairs", ctx.data, "--out", ctx.out, "--option", "limit=-1")
    line = refused(ctx, r, "prepare pairs --option limit", "limit must be a whole number of at least 1, got -1")
    refused(ctx, run_cli("prepare", "pairs", ctx.data, "--out", ctx.out, "--option", "max_new_tokens=abc"),
            "max_new_tokens must be a whole number of at least 1, got 'abc'")
    return line
