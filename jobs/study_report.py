"""The study's report, rebuilt from its stage outputs every time (jobs/study.py runs the stages):
the verdict first, then every system on the test split with paired bootstrap intervals, what each
costs, the other ranks, forgetting, variability, the failures of the best tuned system, the
learning curves and examples. study.md / study.json, and three plots: study.png (curves and every
system's headline), study-ranks.png (quality against training cost), study-forgetting.png.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from common.evaluation.bootstrap import LEVEL, mean_ci, overlap, paired_bootstrap
from common.errors import ConfigError
from common.runs.io import read_json, write_json, write_text
from common.evaluation.registry import Headline, study_headlines
from jobs.study_plan import BASELINE, STAGE_TIMES, STUDY, Plan, shot_system

PLOTS = ("study.png", "study-ranks.png", "study-forgetting.png")


# ------------------------------------------------------------------ reading the stage outputs
def _rows(eval_dir: Path) -> list[dict]:
    from common.runs.io import iter_jsonl
    return [row for _, row in iter_jsonl(eval_dir / "predictions.jsonl")]


def _in_subset(row: dict, subset: str | None) -> bool:
    if subset is None:
        return True
    has = bool(row.get("references"))
    return has if subset == "has_answer" else not has


def item_values(rows_by_system: dict[str, list[dict]], h: Headline) -> dict[str, list[float]]:
    """Per-item values of one headline for every system, on the items all systems scored (same
    ids, same order), restricted to its subset; None scores (e.g. no citation to check) drop the item."""
    first = next(iter(rows_by_system.values()))
    ids = [r["id"] for r in first]
    for name, rows in rows_by_system.items():
        if [r["id"] for r in rows] != ids:
            raise ConfigError(f"{name} scored other test items than {next(iter(rows_by_system))}", where=name,
                              fix="delete the study directory's eval folders and rerun")
    keep = [i for i, r in enumerate(first) if _in_subset(r, h.subset)
            and all(rows[i].get("scores", {}).get(h.key) is not None for rows in rows_by_system.values())]
    return {name: [float(rows[i]["scores"][h.key]) * h.scale for i in keep] for name, rows in rows_by_system.items()}


def _loss_curve(run_dir: Path) -> list[tuple[int, float]]:
    from common.runs.run_dir import RunDir
    return [(r["step"], r["val_loss"]) for r in RunDir(run_dir).read_log() if r.get("event") == "eval"]


def _metric_curve(plan: Plan, backend: str, h: Headline) -> list[tuple[int, float, int]]:
    """(step, mean of the headline on the curve items, n items) at step 0 (baseline) and each point."""
    dirs = [(0, plan.out / BASELINE / "curve" / "step-000000")]
    dirs += sorted((int(d.name.split("-")[-1]), d) for d in (plan.out / backend / "curve").glob("step-*"))
    out = []
    for step, d in dirs:
        vals = item_values({"x": _rows(d)}, h)["x"]
        if vals:
            out.append((step, sum(vals) / len(vals), len(vals)))
    return out


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# ------------------------------------------------------------------ sections
def _results(plan: Plan, systems: dict[str, list[dict]]) -> list[dict]:
    """Every headline: each system's mean and interval; Δ against the zero-shot base for every
    system, against the best k-shot base for each tuned one, and between the two backends."""
    tuned = [s for s in systems if s in plan.tuned()]
    pairs = [(BASELINE, s) for s in systems if s != BASELINE]
    results = []
    for h in study_headlines(plan.metrics):
        vals = item_values(systems, h)
        if not next(iter(vals.values())):
            results.append({"metric": h.label, "key": h.key, "subset": h.subset, "n_items": 0})
            continue
        shot_means = {f"{shot_system(k)}": float(np.mean(vals[shot_system(k)])) for k in plan.shots}
        best_prompt = max([BASELINE, *shot_means], key=lambda s: float(np.mean(vals[s])))
        extra = [(best_prompt, t) for t in tuned] if best_prompt != BASELINE else []
        backend_pair = [(f"{plan.backends[0]}-tuned", f"{plan.backends[1]}-tuned")] if len(plan.backends) == 2 else []
        boot = paired_bootstrap(vals, pairs + extra + backend_pair, n_boot=plan.n_boot, seed=plan.seed)
        verdict = {t: {"beats_baseline": boot["systems"][t]["lo"] > boot["systems"][BASELINE]["hi"],
                       "intervals_overlap": overlap(boot["systems"][t], boot["systems"][BASELINE])} for t in tuned}
        agree = None
        if backend_pair:
            a, b = (boot["systems"][t] for t in backend_pair[0])
            agree = a["lo"] <= b["mean"] <= a["hi"] and b["lo"] <= a["mean"] <= b["hi"]
        results.append({"metric": h.label, "key": h.key, "subset": h.subset, "n_items": boot["n_items"],
                        "systems": boot["systems"], "pairs": boot["pairs"], "verdict": verdict,
                        "best_prompted": best_prompt, "backends_agree_within_intervals": agree})
    return results


def _agreement(plan: Plan, systems: dict[str, list[dict]]) -> dict | None:
    """Per-item agreement of the two backends' tuned answers: same text, same headline score."""
    if len(plan.backends) != 2:
        return None
    a, b = (systems[f"{x}-tuned"] for x in plan.backends)
    key = study_headlines(plan.metrics)[0].key
    same_text = sum(x["prediction"] == y["prediction"] for x, y in zip(a, b))
    same_score = sum(x["scores"].get(key) == y["scores"].get(key) for x, y in zip(a, b))
    return {"n_items": len(a), "same_answer": same_text, "same_score": same_score, "score": key}


def _adapter_params(adapter: Path) -> int | None:
    from safetensors import safe_open
    path = adapter / "adapter_model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), "np") as f:
        return int(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))


def _costs(plan: Plan, systems: dict[str, list[dict]]) -> dict[str, dict]:
    """What each system costs per answer (prompt tokens, seconds) and, when tuned, to train."""
    out = {}
    for name, rows in systems.items():
        cost = {"prompt_tokens": _mean(r.get("prompt_tokens") for r in rows),
                "answer_tokens": _mean(r.get("answer_tokens") for r in rows),
                "seconds_per_answer": _mean(r.get("seconds") for r in rows)}
        run_dir = plan.tuned().get(name)
        if run_dir is not None and (run_dir / "summary.json").is_file():
            s = read_json(run_dir / "summary.json", "summary.json")
            cost.update(trainable_params=_adapter_params(run_dir / "adapter"), train_seconds=s.get("seconds"),
                        peak_memory_mib=(s.get("peak_memory_bytes") or 0) / 2 ** 20, tokens_seen=s.get("tokens_seen"),
                        rank=read_json(run_dir / "adapter" / "adapter_config.json", "adapter_config.json").get("r"))
        out[name] = cost
    return out


def _delta_block(base: list[float], tuned: list[float], plan: Plan) -> dict:
    boot = paired_bootstrap({"base": base, "tuned": tuned}, [("base", "tuned")], n_boot=plan.n_boot, seed=plan.seed)
    p = boot["pairs"][0]
    return {"base": boot["systems"]["base"], "tuned": boot["systems"]["tuned"], "delta": p["delta"], "lo": p["lo"],
            "hi": p["hi"], "measurable": p["lo"] > 0 or p["hi"] < 0, "n": boot["n_items"]}


def _forgetting(plan: Plan) -> dict:
    """Per backend and tuned system: perplexity change on general prose (per chunk, mean NLL per
    token; Δ % = exp(ΔNLL) − 1), multiple-choice acc / acc_norm change, drift KL."""
    from common.evaluation.forgetting import perplexity
    out: dict[str, dict] = {}
    for backend in plan.backends:
        d = plan.out / "forgetting" / backend
        if not (d / "base.json").is_file():
            continue
        base = read_json(d / "base.json", "base.json")
        rows = {"base": {"perplexity": perplexity([c["nll"] for c in base["prose"]], [c["tokens"] for c in base["prose"]]),
                         "mc_acc": _mean(r["acc"] for r in base["mcq"]), "mc_acc_norm": _mean(r["acc_norm"] for r in base["mcq"])}}
        for name in plan.tuned():
            f = d / f"{name}.json"
            if not f.is_file():
                continue
            t = read_json(f, f.name)
            nll = _delta_block([c["nll"] / c["tokens"] for c in base["prose"]], [c["nll"] / c["tokens"] for c in t["prose"]], plan)
            rows[name] = {
                "perplexity": perplexity([c["nll"] for c in t["prose"]], [c["tokens"] for c in t["prose"]]),
                "perplexity_change": {"pct": 100 * math.expm1(nll["delta"]), "lo": 100 * math.expm1(nll["lo"]),
                                      "hi": 100 * math.expm1(nll["hi"]), "measurable": nll["measurable"], "chunks": nll["n"]},
                "mc_acc": _delta_block([100 * r["acc"] for r in base["mcq"]], [100 * r["acc"] for r in t["mcq"]], plan),
                "mc_acc_norm": _delta_block([100 * r["acc_norm"] for r in base["mcq"]],
                                            [100 * r["acc_norm"] for r in t["mcq"]], plan),
                "drift_kl": {**mean_ci([r["kl"] for r in t["drift"]], plan.n_boot, plan.seed), "prompts": len(t["drift"])},
            }
        out[backend] = rows
    return out


def _variability(plan: Plan) -> dict:
    out = {}
    for name in plan.systems():
        f = plan.out / "variability" / f"{name}.json"
        if not f.is_file():
            continue
        v = read_json(f, f.name)
        out[v["system"]] = {k: mean_ci([r[k] for r in v["items"]], plan.n_boot, plan.seed)
                            for k in ("pairwise_rougeL", "distinct_rate")}
        out[v["system"]]["items"], out[v["system"]]["temperature"] = len(v["items"]), v["temperature"]
    return out


def _failures(plan: Plan, systems: dict[str, list[dict]], results: list[dict]) -> dict | None:
    """The best tuned system's answers below the threshold, by category (common.evaluation.failures)."""
    from common.evaluation.failures import failure_table
    head = results[0] if results and results[0].get("n_items") else None
    tuned = [s for s in systems if s in plan.tuned()]
    if head is None or not tuned:
        return None
    best = max(tuned, key=lambda s: head["systems"][s]["mean"])
    h = study_headlines(plan.metrics)[0]
    scores = [None if r["scores"].get(h.key) is None else float(r["scores"][h.key]) * h.scale for r in systems[best]]
    return {"system": best, "metric": h.label, **failure_table(systems[best], scores, plan.failure_threshold)}


def _classification(plan: Plan) -> dict | None:
    """Macro-F1 and unparseable rate per system (corpus scores, from each eval's metrics.json)."""
    if "classification" not in plan.metrics:
        return None
    out = {}
    for name in plan.systems():
        m = read_json(plan.test_dir(name) / "metrics.json", "metrics.json")["metrics"]
        out[name] = {k: m.get(k) for k in ("class_accuracy", "class_macro_f1", "class_unparsed_rate", "class_labels")}
    return out


def majority_class(plan: Plan) -> dict | None:
    """The trivial classifier that always answers the test split's most frequent label: the floor
    a tuned classifier must clear (a model that learned only the label prior sits on it)."""
    from collections import Counter
    from common.evaluation.metrics import macro_f1
    if "classification" not in plan.metrics:
        return None
    gold = [r["scores"].get("class_gold") for r in _rows(plan.test_dir(BASELINE))]
    labels = read_json(plan.test_dir(BASELINE) / "metrics.json", "metrics.json")["metrics"].get("class_labels") or []
    if not gold or not labels:
        return None
    label, n = Counter(gold).most_common(1)[0]
    return {"label": label, "class_accuracy": n / len(gold), "class_macro_f1": macro_f1(gold, [label] * len(gold), labels)}


def build_report(plan: Plan) -> dict:
    systems = {name: _rows(plan.test_dir(name)) for name in plan.systems()}
    results = _results(plan, systems)
    curves = {b: {"val_loss": _loss_curve(plan.out / b / "run"),
                  "metric": _metric_curve(plan, b, study_headlines(plan.metrics)[0])} for b in plan.backends}
    training = {}
    for b in plan.backends:
        p = plan.out / b / "run" / "summary.json"
        training[b] = {k: v for k, v in read_json(p, "summary.json").items()
                       if k in ("final_loss", "val_loss", "seconds", "tokens_per_s")} if p.is_file() else {}
    report = {"settings": plan.settings(), "bootstrap": {"n_boot": plan.n_boot, "seed": plan.seed, "level": LEVEL,
                                                         "method": "percentile, paired over test items"},
              "results": results, "agreement": _agreement(plan, systems), "costs": _costs(plan, systems),
              "classification": _classification(plan), "majority_class": majority_class(plan),
              "forgetting": _forgetting(plan),
              "variability": _variability(plan), "failures": _failures(plan, systems, results),
              "curves": curves, "training": training, "examples": _examples(systems, plan),
              "stage_times": read_json(plan.out / STAGE_TIMES, STAGE_TIMES) if (plan.out / STAGE_TIMES).is_file() else {}}
    report["verdict"] = verdict(report, plan)
    from jobs.study_markdown import markdown
    report["markdown"] = markdown(report, plan)
    return report


def _examples(systems: dict[str, list[dict]], plan: Plan, k: int = 3) -> list[dict]:
    """The first k test items where a tuned answer scores above the baseline's, to show what changed."""
    h = study_headlines(plan.metrics)[0]
    base, tuned = systems[BASELINE], systems[f"{plan.first}-tuned"]
    out = []
    for b, t in zip(base, tuned):
        sb, st = b.get("scores", {}).get(h.key), t.get("scores", {}).get(h.key)
        if sb is not None and st is not None and st > sb:
            out.append({"id": b["id"], "prompt": (b.get("prompt") or "")[-300:], "reference": b.get("reference"),
                        "baseline": b.get("prediction"), "tuned": t.get("prediction"), h.key: [sb, st]})
        if len(out) == k:
            break
    return out


# ------------------------------------------------------------------ verdict
def _signed(x: float) -> str:
    return f"{x:+.1f}"


def verdict(report: dict, plan: Plan) -> dict:
    """The answer to "should I fine-tune?", from the numbers: the best tuned system against the
    best prompted base (zero- or k-shot) on the first headline, with what each costs per call and
    what tuning did to general ability."""
    head = report["results"][0] if report["results"] and report["results"][0].get("n_items") else None
    if head is None:
        return {"text": "No test item could be scored: no verdict.", "fine_tune": None}
    tuned = [s for s in head["systems"] if s in plan.tuned()]
    best, prompted = max(tuned, key=lambda s: head["systems"][s]["mean"]), head["best_prompted"]
    pair = next(p for p in head["pairs"] if p["a"] == prompted and p["b"] == best)
    costs = report["costs"]
    tokens = (costs[prompted]["prompt_tokens"] or 0) / max(costs[best]["prompt_tokens"] or 1, 1)
    wins = pair["lo"] > 0
    lines = [f"{best} − {prompted} = {_signed(pair['delta'])} [{_signed(pair['lo'])}, {_signed(pair['hi'])}] "
             f"{head['metric']} ({'better: the interval lies above 0' if wins else 'not clearly better'})"
             + (f", with {tokens:.1f}× fewer prompt tokens per call" if tokens > 1.05 else "")]
    forgot = []
    for backend, rows in report["forgetting"].items():
        row = rows.get(best) or rows.get(f"{backend}-tuned")
        if row is None:
            continue
        ppl, mc = row["perplexity_change"], row["mc_acc"]
        measurable = ppl["measurable"] and ppl["pct"] > 0 or mc["measurable"] and mc["delta"] < 0
        forgot.append(measurable)
        lines.append(f"general-text perplexity {ppl['pct']:+.1f} % [{ppl['lo']:+.1f}, {ppl['hi']:+.1f}], "
                     f"multiple-choice accuracy {_signed(mc['delta'])} [{_signed(mc['lo'])}, {_signed(mc['hi'])}] "
                     f"points ({backend}): " + ("measurable forgetting" if measurable else "no measurable forgetting"))
        break
    decision = ("Fine-tuning earns its place here" if wins else
                "Prompting does as well here: fine-tuning is not (yet) worth it")
    if wins and any(forgot):
        decision += ", at the price of measurable forgetting"
    return {"text": f"{decision}. " + "; ".join(lines) + ".", "fine_tune": wins, "best_tuned": best,
            "best_prompted": prompted, "forgetting_measurable": any(forgot) if forgot else None}


# ------------------------------------------------------------------ files
def write_report(out: Path, report: dict) -> None:
    from common.evaluation import plots
    from jobs.study_plots import figures
    write_text(out / "study.md", report["markdown"])
    made = []
    for name, fig in figures(report).items():
        plots.save(fig, out / name)
        made.append(name)
    report["plots"] = made
    write_json(out / STUDY, {k: v for k, v in report.items() if k != "markdown"})
