"""study.md from the report dict (jobs/study_report.py): verdict, systems, costs, forgetting,
variability, failures, learning curves, examples — each section one table and a line on how to
read it."""
from __future__ import annotations

from typing import Any

from common.evaluation.bootstrap import LEVEL
from common.evaluation.registry import study_headlines
from common.evaluation.reports import _table
from jobs.study_plan import BASELINE, Plan


def _fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(s: dict, digits: int = 1) -> str:
    return f"{_fmt(s['mean'], digits)} [{_fmt(s['lo'], digits)}, {_fmt(s['hi'], digits)}]"


def _delta(p: dict, digits: int = 1) -> str:
    return f"{p['delta']:+.{digits}f} [{p['lo']:+.{digits}f}, {p['hi']:+.{digits}f}]"


def _one_line(text: Any, width: int = 160) -> str:
    s = " ".join(str(text or "").split()).replace("`", "'").replace("|", "/")
    return s if len(s) <= width else s[:width] + " …"


def _header(plan: Plan) -> list[str]:
    cfg, t = plan.cfg, plan.cfg.training
    targets = cfg.lora.target_modules
    return [f"# Should I fine-tune? Study: {cfg.name or 'study'}\n",
            f"Base model `{cfg.model.path}`; LoRA r{cfg.lora.rank} α{cfg.lora.alpha:g} on "
            f"{', '.join(targets) if isinstance(targets, list) else targets}; {t.steps} steps × batch {t.batch_size} × "
            f"accumulation {t.grad_accumulation}, lr {t.lr:g} ({t.schedule}); greedy decoding, max_new_tokens "
            f"{plan.max_new_tokens}; template `{cfg.data.template}`.\n",
            f"Test split `{cfg.data.test}`; learning curve on {plan.curve_items} validation records. Intervals: "
            f"{LEVEL:.0%} paired percentile bootstrap over items ({plan.n_boot} replicates, seed {plan.seed}).\n"]


def _systems(report: dict, plan: Plan) -> list[str]:
    results = [r for r in report["results"] if r.get("n_items")]
    if not results:
        return ["## Systems on the test split\n", "No item could be scored.\n"]
    head, costs = results[0], report["costs"]
    rows = []
    for name in plan.systems():
        delta = next((_delta(p) for p in head["pairs"] if p["a"] == BASELINE and p["b"] == name), "")
        c = costs.get(name, {})
        rows.append([name, *(_ci(r["systems"][name]) for r in results), delta, _fmt(c.get("prompt_tokens"), 0),
                     _fmt(c.get("seconds_per_answer"), 2)])
    header = ["system", *(f"{r['metric']} (n={r['n_items']})" for r in results), f"Δ {head['metric']} vs baseline",
              "prompt tokens / answer", "s / answer"]
    lines = ["## Systems on the test split\n", _table(header, rows) + "\n",
             "`baseline` is the base model zero-shot; `base-Kshot` the base with K training examples before every "
             "question; `<backend>-tuned` the config's adapter; `<backend>-rN` the same training at rank N. "
             "Δ = paired difference with its own interval. Seconds per answer are wall time on the machine that ran "
             "the study (a batch's time shared by its answers).\n"]
    notes = []
    for r in results:
        if r["best_prompted"] != BASELINE:
            notes += [f"- {r['metric']}: {p['b']} − {p['a']} (the best prompted base) = {_delta(p)}"
                      for p in r["pairs"] if p["a"] == r["best_prompted"]]
        beats = [t for t, v in r["verdict"].items() if v["beats_baseline"]]
        notes.append(f"- {r['metric']}: " + (f"interval wholly above the baseline's: {', '.join(beats)}" if beats
                                             else "no tuned interval lies wholly above the baseline's"))
        if r["backends_agree_within_intervals"] is not None:
            notes[-1] += "; backends " + ("agree" if r["backends_agree_within_intervals"] else "DISAGREE") + \
                " (each mean inside the other's interval)"
    agree = report["agreement"]
    if agree:
        notes.append(f"- Per item, the two backends' tuned answers are identical on {agree['same_answer']} of "
                     f"{agree['n_items']} items and score the same {agree['score']} on {agree['same_score']}.")
    return lines + notes + [""]


def _training_costs(report: dict, plan: Plan) -> list[str]:
    head = next((r for r in report["results"] if r.get("n_items")), None)
    rows = [[name, c.get("rank"), f"{c['trainable_params']:,}" if c.get("trainable_params") else "n/a",
             _fmt(c.get("train_seconds"), 0), _fmt(c.get("peak_memory_mib"), 0),
             f"{c['tokens_seen']:,}" if c.get("tokens_seen") else "n/a", _ci(head["systems"][name]) if head else ""]
            for name, c in report["costs"].items() if "train_seconds" in c]
    if not rows:
        return []
    return ["## What tuning cost\n",
            _table(["system", "rank", "trainable parameters", "training s", "peak memory MiB", "tokens seen",
                    f"{head['metric'] if head else 'score'} [CI]"], rows) + "\n",
            "Other ranks keep the config's alpha / rank (the same update scale). Peak memory is the process's "
            "peak when the run ended; training seconds are wall time on the machine that ran the study.\n"]


def _classification(report: dict) -> list[str]:
    c = report.get("classification")
    if not c:
        return []
    rows = [[n, _fmt(100 * (v["class_accuracy"] or 0)), _fmt(100 * (v["class_macro_f1"] or 0)),
             _fmt(100 * (v["class_unparsed_rate"] or 0))] for n, v in c.items()]
    labels = next(iter(c.values()))["class_labels"] or []
    maj = report.get("majority_class")
    if maj:
        rows.append([f"always \"{_one_line(maj['label'], 40)}\" (majority label)", _fmt(100 * maj["class_accuracy"]),
                     _fmt(100 * maj["class_macro_f1"]), "0.0"])
    return ["## Classification\n", _table(["system", "accuracy %", "macro-F1 %", "unparseable %"], rows) + "\n",
            f"Macro-F1 over the {len(labels)} labels ({'; '.join(labels)}); an answer naming no label, or several, "
            "is unparseable and counts as wrong.\n"]


def _forgetting(report: dict) -> list[str]:
    rows = []
    for backend, systems in report["forgetting"].items():
        base = systems["base"]
        for name, s in systems.items():
            if name == "base":
                continue
            ppl, mc = s["perplexity_change"], s["mc_acc"]
            forgot = (ppl["measurable"] and ppl["pct"] > 0) or (mc["measurable"] and mc["delta"] < 0)
            rows.append([backend, name, f"{base['perplexity']:.2f} → {s['perplexity']:.2f}",
                         f"{ppl['pct']:+.1f} [{ppl['lo']:+.1f}, {ppl['hi']:+.1f}]",
                         f"{mc['base']['mean']:.1f} → {mc['tuned']['mean']:.1f}", _delta(mc), _delta(s["mc_acc_norm"]),
                         _ci(s["drift_kl"], 4), "measurable forgetting" if forgot else "none measurable"])
    if not rows:
        return []
    first = next(iter(report["forgetting"].values()))
    some = next(v for k, v in first.items() if k != "base")
    return ["## Forgetting (general material, unrelated to the task)\n",
            _table(["backend", "system", "perplexity", "Δ perplexity %", "MC accuracy", "Δ acc", "Δ acc_norm",
                    "drift KL (nats/token)", "verdict"], rows) + "\n",
            f"Perplexity on French, English and German prose (`data/general/`, {some['perplexity_change']['chunks']} "
            f"chunks of 256 tokens; the interval resamples chunks); multiple-choice accuracy on "
            f"{some['mc_acc']['n']} general-knowledge items scored by log-likelihood as lm-evaluation-harness "
            f"(acc; acc_norm divides by the answer's length in characters), in points; drift = mean per-token "
            f"KL(base ‖ tuned) over the base model's greedy answers to {some['drift_kl']['prompts']} general prompts. "
            "\"Measurable forgetting\" = perplexity up or accuracy down with an interval that excludes 0.\n"]


def _stage_times(report: dict) -> list[str]:
    times = report.get("stage_times") or {}
    if not times:
        return []
    rows = [[stage, f"{t['wall_s'] / 60:.1f}", f"{t['cpu_s'] / 60:.1f}", t["runs"]] for stage, t in times.items()]
    wall, cpu = (sum(t[k] for t in times.values()) / 60 for k in ("wall_s", "cpu_s"))
    rows.append(["all stages", f"{wall:.1f}", f"{cpu:.1f}", ""])
    return ["## Time per stage\n", _table(["stage", "wall min", "CPU min", "runs"], rows) + "\n",
            "Summed over every run of this study command (an interrupted stage's lost work counts; a stage kept "
            "from an earlier run adds almost nothing). CPU = user + system seconds of the study's process: on a "
            "shared machine wall time also measures the neighbours, CPU time only this study.\n"]


def _variability(report: dict) -> list[str]:
    v = report["variability"]
    if not v:
        return []
    rows = [[n, _ci(s["pairwise_rougeL"], 3), _ci(s["distinct_rate"], 2), s["items"]] for n, s in v.items()]
    t = next(iter(v.values()))["temperature"]
    return ["## Output variability\n",
            _table(["system", "pairwise ROUGE-L F", "distinct-answer rate", "items"], rows) + "\n",
            f"Several answers per item sampled at temperature {t:g} (seeds 0 … N−1): pairwise ROUGE-L F between "
            "them (1 = the same words in the same order) and distinct answers ÷ N. Lower variability = more "
            "predictable output.\n"]


def _failures(report: dict) -> list[str]:
    f = report["failures"]
    if not f:
        return []
    lines = [f"## Where {f['system']} still fails\n",
             f"{f['n_failed']} of {f['n_items']} test items score below {f['threshold']:g} ({f['metric']}), each in "
             f"the first matching category (common/evaluation/failures.py" +
             (f"; the answer template = opening with \"{f['opening_word']}\"" if f["opening_word"] else "") + "):\n"]
    rows = []
    for cat, c in f["categories"].items():
        ex = "<br>".join(f"`{_one_line(e['prediction'], 100)}` (ref. `{_one_line(e['reference'], 60)}`)"
                         for e in c["examples"])
        rows.append([cat, c["count"], ex])
    return lines + [_table(["category", "items", "examples (answer, reference)"], rows) + "\n"] if rows else lines


def _curves(report: dict, plan: Plan) -> list[str]:
    crow = []
    for b in plan.backends:
        losses = dict(report["curves"][b]["val_loss"])
        for step, value, n in report["curves"][b]["metric"]:
            crow.append([b, step, f"{value:.1f}", n, f"{losses[step]:.4f}" if step in losses else ""])
    h0 = study_headlines(plan.metrics)[0]
    lines = ["## Learning curves\n",
             _table(["backend", "step", f"{h0.label} (validation items)", "items", "validation loss"], crow) + "\n",
             "Step 0 is the base model. Validation loss is on the whole validation split.\n"]
    train = report["training"]
    if train:
        lines.append("Training: " + "; ".join(
            f"{b} final train loss {v.get('final_loss', float('nan')):.4f}, validation loss "
            f"{v.get('val_loss', float('nan')):.4f}, {v.get('seconds', 0):.0f} s" for b, v in train.items() if v) + ".\n")
    return lines


def _examples(report: dict, plan: Plan) -> list[str]:
    if not report["examples"]:
        return []
    lines = ["## What changed (test items where the tuned answer scores higher)\n"]
    for ex in report["examples"]:
        lines += [f"- **{ex['id']}** reference: `{_one_line(ex['reference'])}`",
                  f"  - baseline: `{_one_line(ex['baseline'])}`", f"  - tuned ({plan.first}): `{_one_line(ex['tuned'])}`"]
    return lines + [""]


def markdown(report: dict, plan: Plan) -> str:
    lines = _header(plan) + ["## Verdict\n", f"**{report['verdict']['text']}**\n"]
    for section in (_systems(report, plan), _training_costs(report, plan), _classification(report),
                    _forgetting(report), _variability(report), _failures(report), _curves(report, plan),
                    _examples(report, plan), _stage_times(report)):
        lines += section
    lines.append("Files: `baseline/`, `base-Kshot/`, `<backend>/run/` (training run), `<backend>/rank-N/`, "
                 "`<backend>/curve/step-N/` and `<backend>/test/` (eval reports: metrics.json, predictions.jsonl, "
                 "report.md), `forgetting/`, `variability/`, study.json and the plots.\n")
    return "\n".join(lines)
