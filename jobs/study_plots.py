"""The study's figures (common.evaluation.plots makes every PNG alike): study.png (validation loss, the
headline along training, every system's headline with its interval), study-ranks.png (quality
against training cost per rank), study-forgetting.png (perplexity change, multiple-choice change
and drift per tuned system, with intervals)."""
from __future__ import annotations

from common.evaluation.bootstrap import LEVEL

GREY, COLOURS = "#999999", ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def _bars(ax, names, means, los, his, colours) -> None:
    err = [[m - lo for m, lo in zip(means, los)], [hi - m for m, hi in zip(means, his)]]
    ax.bar(names, means, yerr=err, capsize=5, color=colours)
    ax.tick_params(axis="x", labelrotation=30)


def overview(report: dict):
    from common.evaluation import plots
    fig, (ax1, ax2, ax3) = plots.figure(15, 4.4, 3)
    for b, c in report["curves"].items():
        if c["val_loss"]:
            ax1.plot(*zip(*c["val_loss"]), marker="o", label=b)
        if c["metric"]:
            ax2.plot([s for s, _, _ in c["metric"]], [v for _, v, _ in c["metric"]], marker="o", label=b)
    head = report["results"][0]
    plots.style(ax1, xlabel="step", ylabel="validation loss (per target token)", title="validation loss")
    plots.style(ax2, xlabel="step (0 = base model)", ylabel=head["metric"], title=f"{head['metric']} on validation items",
                zero=True)
    if head.get("n_items"):
        names = list(head["systems"])
        s = [head["systems"][n] for n in names]
        colours = [GREY if n.startswith("base") else COLOURS[i % len(COLOURS)] for i, n in enumerate(names)]
        _bars(ax3, names, [x["mean"] for x in s], [x["lo"] for x in s], [x["hi"] for x in s], colours)
        ax3.set(ylabel=head["metric"], title=f"test split, {LEVEL:.0%} bootstrap intervals (n={head['n_items']})")
    plots.style(ax3, zero=True, legend=False)
    return fig


def ranks(report: dict):
    """Headline (with interval) against training seconds, one point per tuned system, labelled by rank."""
    from common.evaluation import plots
    head = report["results"][0]
    points = [(n, c) for n, c in report["costs"].items() if "train_seconds" in c and head.get("n_items")]
    if len(points) < 2:
        return None
    fig, (ax1, ax2) = plots.figure(11, 4.2, 2)
    for ax, key, label in ((ax1, "train_seconds", "training seconds"), (ax2, "trainable_params", "trainable parameters")):
        for i, (n, c) in enumerate(points):
            s = head["systems"][n]
            ax.errorbar([c[key] or 0], [s["mean"]], yerr=[[s["mean"] - s["lo"]], [s["hi"] - s["mean"]]], fmt="o",
                        capsize=5, color=COLOURS[i % len(COLOURS)], label=f"{n} (r{c.get('rank')})")
        plots.style(ax, xlabel=label, ylabel=head["metric"], title=f"{head['metric']} vs {label}", zero=True)
    ax2.set_xscale("log")
    return fig


def forgetting(report: dict):
    from common.evaluation import plots
    rows = [(f"{n}\n({b})", s) for b, systems in report["forgetting"].items() for n, s in systems.items() if n != "base"]
    if not rows:
        return None
    fig, (ax1, ax2, ax3) = plots.figure(15, 4.4, 3)
    names = [n for n, _ in rows]
    colours = [COLOURS[i % len(COLOURS)] for i in range(len(rows))]
    ppl = [s["perplexity_change"] for _, s in rows]
    _bars(ax1, names, [p["pct"] for p in ppl], [p["lo"] for p in ppl], [p["hi"] for p in ppl], colours)
    mc = [s["mc_acc"] for _, s in rows]
    _bars(ax2, names, [m["delta"] for m in mc], [m["lo"] for m in mc], [m["hi"] for m in mc], colours)
    kl = [s["drift_kl"] for _, s in rows]
    _bars(ax3, names, [k["mean"] for k in kl], [k["lo"] for k in kl], [k["hi"] for k in kl], colours)
    for ax in (ax1, ax2):
        ax.axhline(0, color="black", linewidth=0.8)
    plots.style(ax1, ylabel="Δ perplexity vs base (%)", title="general prose (fr/en/de)", legend=False)
    plots.style(ax2, ylabel="Δ accuracy vs base (points)", title="general multiple choice", legend=False)
    plots.style(ax3, ylabel="KL(base ‖ tuned), nats/token", title="drift on general prompts", zero=True, legend=False)
    return fig


def figures(report: dict) -> dict:
    """File name → figure, for the figures this report has data for."""
    made = {"study.png": overview(report), "study-ranks.png": ranks(report), "study-forgetting.png": forgetting(report)}
    return {k: v for k, v in made.items() if v is not None}
