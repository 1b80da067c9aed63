"""The end-to-end demo on the embedded model: prepare → train (mlx) → train (torch) → parity →
generate → (optionally) eval of baseline / MLX-tuned / torch-tuned side by side, printing where
every output is. Sized for 2 CPU cores."""
from __future__ import annotations

import json
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from backends.capabilities import PARITY_PAIR
from jobs.defaults import MAX_NEW_TOKENS

ROOT = Path(__file__).resolve().parents[1]
CRPA = ROOT / "data" / "legi" / "LEGITEXT000031366350_crpa_sample.json"
DEMO_PROMPT = "Que prévoit l'article L100-1 du code des relations entre le public et l'administration ?"
# Every training answer of the legi recipe opens "Article <number> du Code <title>"; the base model
# never writes that, so the opening shows what training taught, on a question it never saw.
FORM = re.compile(r"^\W*Article\s+(?:LO|L|R|D|A)\s?\d+(?:-\d+)+\s+du\s+Code\b")


def run_demo(out: Path, steps: int, echo=print, eval_items: int = 0) -> dict:
    """Starts over in `out` each time (the demo directory is removed first), holding the output's
    lock (common.runs.lock.OutputLock) so a second demo cannot remove the first's files under it."""
    from common.runs.io import real_path
    from common.runs.lock import OutputLock
    from common.runs.ownership import check_output_dir

    t_start = time.time()
    exists = check_output_dir(out, "demo", "--output")
    out = real_path(out)  # a symlinked demo directory starts over at its target, the link kept
    with OutputLock(out):  # one demo per directory: a second would remove the first's files under it
        if exists:  # only a previous demo of ours is removed
            shutil.rmtree(out)
        return _run(out, steps, echo, eval_items, t_start)


def _run(out: Path, steps: int, echo, eval_items: int, t_start: float) -> dict:
    """The five stages, their summary.json and the closing lines."""
    from common.runs.io import write_json
    from jobs.session import open_model

    stages = _Stages(echo)
    data_dir = out / "data"
    with stages.run("1/5 model + data", "prepare_s"):
        _prepare(data_dir, echo)
    runs = {}
    for i, backend in enumerate(PARITY_PAIR, start=2):
        with stages.run(f"{i}/5 train on {backend}", f"train_{backend}_s"):
            runs[backend] = _train_in_subprocess(backend, data_dir, out / backend, steps)
    _echo_val_losses(runs, out, echo)
    with stages.run("4/5 parity: the MLX-trained adapter on both backends", "parity_s"):
        sessions, rep = _parity(out, echo)
    with stages.run("5/5 generate with each backend's adapter", "generate_s"):
        generations, torch_tuned = _generate(out, sessions["mlx"], echo)
    with stages.run("what training taught: a held-out question, base vs tuned", "learned_s"):
        learned = learned_form_example(data_dir / "test.jsonl", open_model("torch", "embedded"), torch_tuned, echo)
    table = None
    if eval_items:
        with stages.run(f"eval: baseline vs MLX-tuned vs torch-tuned on {eval_items} test records", "eval_s"):
            table = _eval_side_by_side(out, data_dir / "test.jsonl", eval_items, echo)
    timings = stages.timings
    timings["total_s"] = round(time.time() - t_start, 1)
    summary = {"timings": timings, "eval_table": table, "final_loss": {b: runs[b]["final_loss"] for b in runs},
               "val_loss": {b: runs[b]["val_loss"] for b in runs},
               "val_loss_before": {b: runs[b].get("val_loss_before") for b in runs},
               "parity": {k: rep[k] for k in ("max_abs_logit_diff", "mean_kl", "same_greedy_text", "pass")},
               "loss_curves": rep["loss_curves"], "generations": generations, "learned": learned}
    write_json(out / "summary.json", summary)
    _echo_outputs(out, data_dir, table, timings, echo)
    return summary


class _Stages:
    """Each demo stage announced on the console and its seconds kept in `timings` (for summary.json)."""

    def __init__(self, echo):
        self.echo, self.timings = echo, {}

    @contextmanager
    def run(self, title: str, key: str):
        self.echo(f"\n=== {title} ===")
        t = time.time()
        yield
        self.timings[key] = round(time.time() - t, 1)


def _prepare(data_dir: Path, echo) -> None:
    """The embedded model in the cache and the legi recipe's splits from the bundled CRPA sample."""
    from common.data.recipes import run_recipe
    from common.models.resolve import embedded_model_dir
    embedded_model_dir()
    manifest = run_recipe("legi", [str(CRPA)], data_dir, seed=0, options={})
    echo(manifest.get("summary", ""))


def _echo_val_losses(runs: dict, out: Path, echo) -> None:
    """Validation loss before → after training, per backend (when the run validated before training)."""
    for backend, r in runs.items():
        if r.get("val_loss_before") is not None:
            echo(f"[{backend}] validation loss {r['val_loss_before']:.4f} before training → {r['val_loss']:.4f} after "
                 f"({100 * (r['val_loss'] - r['val_loss_before']) / r['val_loss_before']:+.1f}%); plot: {out / backend / 'loss.png'}")


def _parity(out: Path, echo) -> tuple[dict, dict]:
    """The MLX-trained adapter opened on both backends (logits, KL, greedy text) and the two runs'
    loss curves compared; writes parity.json. Returns (the open sessions, the report)."""
    from common.runs.io import write_json
    from common.runs.run_dir import RunDir
    from jobs.parity import PROMPTS, loss_curve_gap, run_parity
    from jobs.session import open_model
    adapter = out / "mlx" / "adapter"
    sessions = {b: open_model(b, "embedded", adapter=adapter) for b in PARITY_PAIR}
    rep = run_parity(sessions, PROMPTS[:3], max_new_tokens=MAX_NEW_TOKENS["parity"])
    rep["loss_curves"] = loss_curve_gap(*(RunDir(out / b).read_log() for b in PARITY_PAIR))
    write_json(out / "parity.json", rep)
    echo(f"max |Δlogit| {rep['max_abs_logit_diff']:.3e} (tol {rep['tolerance']['max_abs_logit_diff']:.0e}), "
         f"mean KL {rep['mean_kl']:.3e}, same greedy text: {rep['same_greedy_text']} → "
         f"{'PASS' if rep['pass'] else 'FAIL'}")
    lc = rep["loss_curves"]
    echo(f"loss curves (mlx vs torch, same init and batches): {lc['steps']} steps, "
         f"max |Δloss| {lc['max_abs_loss_gap']:.2e} (relative {lc['max_rel_loss_gap']:.2e})")
    return sessions, rep


def _generate(out: Path, mlx_tuned, echo) -> tuple[dict, object]:
    """DEMO_PROMPT answered with each backend's own adapter. Returns (the answers, the torch-tuned
    session, reused to show what training taught)."""
    from jobs.session import open_model, reply
    generations = {}
    for backend in PARITY_PAIR:
        opened = mlx_tuned if backend == "mlx" else open_model("torch", "embedded", adapter=out / "torch" / "adapter")
        generations[backend] = reply(opened, DEMO_PROMPT, 48)
        echo(f"[{backend}] >>> {DEMO_PROMPT}\n{generations[backend]}\n")
    return generations, opened


def _echo_outputs(out: Path, data_dir: Path, table, timings: dict, echo) -> None:
    """Where every output is, and the timings."""
    echo("=== outputs ===")
    outputs = [("prepared data", data_dir), ("MLX run", out / "mlx"), ("torch run", out / "torch"),
               ("adapters (PEFT format)", f"{out}/*/adapter"), ("mlx-lm adapter", out / "mlx" / "adapter" / "mlx"),
               ("parity report", out / "parity.json"), ("summary", out / "summary.json")]
    if table:
        outputs.append(("eval comparison", out / "compare" / "compare.md"))
    for name, path in outputs:
        echo(f"  {name:24s} {path}")
    echo(f"demo finished in {timings['total_s']} s: " + json.dumps(timings))


def learned_form_example(test_file: Path, base, tuned, echo=print, max_new_tokens: int = 32) -> dict:
    """The first held-out "locate" question (where does article N sit in the code?) answered by the
    base and the tuned model, with the record's own system prompt as in training; says whether each
    answer opens in the training data's form ("Article <n> du Code ..."). docs/quality.md measures
    the same on 40-70 test items with intervals; this is the one example you can read."""
    from common.data.formats import load_examples
    from jobs.session import answer
    examples = load_examples(test_file)
    ex = next((e for e in examples if e.meta.get("meta", e.meta).get("template") == "locate"), examples[0])
    question = list(ex.messages[:-1])
    out = {"question": question[-1]["content"], "reference": ex.completion.strip()}
    echo(f">>> {out['question']}\n[reference] {out['reference'][:160]}")
    for name, opened in (("base", base), ("tuned", tuned)):
        text = answer(opened, question, max_new_tokens).strip()
        out[name], out[f"{name}_in_form"] = text, bool(FORM.match(text))
        echo(f"[{name}] {text[:160]}")
    echo("answer opens like the training answers (\"Article <n> du Code …\"): "
         f"base {'yes' if out['base_in_form'] else 'no'}, tuned {'yes' if out['tuned_in_form'] else 'no'}")
    return out


def _train_in_subprocess(backend: str, data_dir: Path, run_dir: Path, steps: int) -> dict:
    """`cli.py train` in its own process, as a user runs it. In one process, torch trains ~5x slower
    once MLX has loaded OpenBLAS globally (measured 30 vs 165 tok/s on 2 cores): the two BLAS
    thread pools fight over the cores."""
    import subprocess
    import sys
    from common.errors import TrainingError
    cmd = [sys.executable, str(ROOT / "cli.py"), "train", "--config", str(ROOT / "configs" / "legi-demo.yaml"),
           "--backend", backend, "--data", str(data_dir / "train.jsonl"), "--valid", str(data_dir / "valid.jsonl"),
           "--steps", str(steps), "--output", str(run_dir), "--overwrite"]
    if subprocess.run(cmd).returncode != 0:
        raise TrainingError(f"training on {backend} failed (see the lines above)", where=str(run_dir))
    return json.loads((run_dir / "summary.json").read_text())


def _eval_side_by_side(out: Path, test_file: Path, n: int, echo) -> str:
    """`eval` three times (same test records, greedy) and `compare` the three reports."""
    from jobs.evaluation import run_eval
    from common.evaluation.reports import compare
    runs = [("baseline", "torch", None), ("mlx-tuned", "mlx", out / "mlx" / "adapter"),
            ("torch-tuned", "torch", out / "torch" / "adapter")]
    dirs = []
    for label, backend, adapter in runs:
        d = out / "eval" / label
        run_eval(backend=backend, model="embedded", adapter=str(adapter) if adapter else None, data=str(test_file),
                 out_dir=d, metrics=None, limit=n, max_new_tokens=64, template="chat", system_prompt=None,
                 metric_options={}, label=label, echo=echo)
        dirs.append(d)
    table = compare(dirs, [r[0] for r in runs], out / "compare")
    echo(table)
    return table
