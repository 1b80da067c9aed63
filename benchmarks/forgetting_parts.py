"""The forgetting stage's parts, an earlier checkout's code against this one's, in one process on
one loaded model and the same inputs: CPU seconds per part, the ratio, and the largest difference
between the two versions' scores. A subset of the shipped material (`--prompts`, `--chunks`,
`--items`) keeps it short on a loaded machine; the full stage scales with the counts.

    python benchmarks/forgetting_parts.py --old /tmp/old-checkout --adapter runs/quality/legi-smollm2/torch/run/adapter

The earlier checkout's `jobs/general_checks.py` and `common/evaluation/forgetting.py` are loaded from its
files under other module names; everything else (backend, tokenizer) is this checkout's.
"""
from __future__ import annotations

import argparse
import importlib.util
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# What an earlier checkout's two files import by the flat names common/ had before issue 31, and
# where this checkout holds it (set in this benchmark's process only, for such a checkout).
FLAT_NAMES = {"io": "runs.io", "tokenize": "training.tokenize", "forgetting": "evaluation.forgetting"}


def load_old(checkout: Path):
    """The old checkout's general_checks, bound to the old checkout's forgetting arithmetic (its
    forgetting module where that checkout has it: common/ was flat before issue 31)."""
    forgetting = next(p for p in (checkout / "common" / "evaluation" / "forgetting.py",
                                  checkout / "common" / "forgetting.py") if p.exists())
    if forgetting.parent.name == "common":
        for flat, now in FLAT_NAMES.items():
            sys.modules.setdefault(f"common.{flat}", importlib.import_module(f"common.{now}"))
    mods = {}
    for name, path in (("old_forgetting", forgetting), ("old_general_checks", checkout / "jobs" / "general_checks.py")):
        spec = importlib.util.spec_from_file_location(name, path)
        mods[name] = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[name])
    mods["old_general_checks"].fg = mods["old_forgetting"]
    return mods["old_general_checks"]


def timed(fn):
    c = cpu_seconds()
    out = fn()
    return out, cpu_seconds() - c


def subset(general, prompts: int, chunks_per_lang: int, items: int, tokenizer):
    """The first prompts and items, and each language's text cut to about `chunks_per_lang` chunks."""
    from common.evaluation import forgetting as fg
    prose = {lang: tokenizer.decode(tokenizer(text)["input_ids"][:fg.CHUNK * chunks_per_lang])
             for lang, text in general.prose.items()}
    return fg.General(prose, general.prompts[:prompts], general.mcq[:items])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, type=Path, help="a checkout of the earlier code")
    ap.add_argument("--adapter", required=True, type=Path, help="a tuned adapter of the model (the drift's tuned side)")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--chunks", type=int, default=4, help="prose chunks per language")
    ap.add_argument("--items", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    from common.evaluation import forgetting as fg
    from jobs import general_checks as new
    from jobs.session import add_adapter, open_model
    old = load_old(args.old)
    opened = open_model(args.backend, args.model)
    be, tok = opened.backend, opened.tokenizer
    general = subset(fg.load_general(), args.prompts, args.chunks, args.items, tok)
    add_adapter(opened, "tuned", args.adapter)
    rows = []
    (a_old, t_old) = timed(lambda: old.base_answers(be, tok, general, args.max_new_tokens))
    (a_new, t_new) = timed(lambda: new.base_answers(be, tok, general, args.max_new_tokens))
    same = sum(x["answer_ids"] == y["answer_ids"] for x, y in zip(a_old, a_new))
    rows.append(("base greedy answers", len(a_new), t_old, t_new, f"{same} of {len(a_new)} identical"))
    be.set_active_adapter("tuned")
    for part, n in (("prose", sum(len(fg.prose_chunks(tok, t)) for t in general.prose.values())),
                    ("mcq", len(general.mcq))):
        r_old, t_old = timed(lambda: getattr(old, f"{part}_scores")(be, tok, general))
        r_new, t_new = timed(lambda: getattr(new, f"{part}_scores")(be, tok, general))
        key = (lambda r: [r["nll"]]) if part == "prose" else (lambda r: r["logliks"])
        diff = max(abs(x - y) for a, b in zip(r_old, r_new) for x, y in zip(key(a), key(b)))
        rows.append((f"{part} (tuned)", n, t_old, t_new, f"max |diff| {diff:.1e}"))
    d_old, t_old = timed(lambda: old.drift_scores(be, a_new))
    d_new, t_new = timed(lambda: new.drift_scores(be, a_new, ["tuned"])["tuned"])
    diff = max(abs(a["kl"] - b["kl"]) for a, b in zip(d_old, d_new))
    rows.append(("drift, one tuned system", len(d_new), t_old, t_new, f"max |diff| {diff:.1e}"))
    print(f"| part ({args.backend}) | n | old CPU s | new CPU s | old/new | scores |\n|---|---|---|---|---|---|")
    for name, n, a, b, note in rows:
        print(f"| {name} | {n} | {a:.1f} | {b:.1f} | {a / max(b, 1e-9):.2f}× | {note} |", flush=True)


if __name__ == "__main__":
    main()
