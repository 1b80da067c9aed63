"""The forgetting stage of `study` alone, timed (wall and CPU seconds), on the tuned systems of a
finished study, and its scores checked against that study's own forgetting files.

Why: the forgetting stage is the study's dearest part on a CPU; this reruns exactly that stage
(`jobs.general_checks.run_general`, whatever version of it is importable from the current
directory) so two versions of the code can be compared on the same adapters, and so that a
faster version is shown to report the same numbers.

    python benchmarks/forgetting_stage.py --study runs/quality/legi-smollm2 --out /tmp/fs-after
    # then, with a warm cache (a second study of the same base):
    python benchmarks/forgetting_stage.py --study runs/quality/legi-smollm2 --out /tmp/fs-after-2

Prints one line per backend (wall s, CPU s) and, per system, the largest difference from the
study's files: prose NLL per chunk, MC log-likelihoods, drift KL per answer; MC picks and base
answers must be identical.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def systems_of(study: Path, backend: str) -> dict:
    settings = json.loads((study / "settings.json").read_text())
    out = {"base": None, f"{backend}-tuned": study / backend / "run" / "adapter"}
    if backend == settings["backends"][0]:
        out.update({f"{backend}-r{r}": study / backend / f"rank-{r}" / "run" / "adapter" for r in settings["ranks"]})
    return out


def max_diffs(mine: dict, ref: dict) -> dict:
    """Largest absolute differences between two systems' forgetting files."""
    nll = max(abs(a["nll"] - b["nll"]) for a, b in zip(mine["prose"], ref["prose"]))
    ll = max(abs(x - y) for a, b in zip(mine["mcq"], ref["mcq"]) for x, y in zip(a["logliks"], b["logliks"]))
    picks = sum((a["pick"], a["pick_norm"]) != (b["pick"], b["pick_norm"]) for a, b in zip(mine["mcq"], ref["mcq"]))
    out = {"prose_nll": nll, "mc_loglik": ll, "mc_picks_changed": picks}
    if ref.get("drift"):
        out["drift_kl"] = max(abs(a["kl"] - b["kl"]) for a, b in zip(mine["drift"], ref["drift"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", required=True, type=Path, help="a finished study directory (its adapters and files)")
    ap.add_argument("--out", required=True, type=Path, help="where the stage writes (a new folder)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    from jobs.general_checks import ANSWERS, run_general
    settings = json.loads((args.study / "settings.json").read_text())
    model, timings = settings["config"]["model"]["path"], {}
    for backend in settings["backends"]:
        wall, cpu = time.perf_counter(), cpu_seconds()
        run_general(backend, model, systems_of(args.study, backend), args.out / backend, args.out / ANSWERS,
                    max_new_tokens=args.max_new_tokens, echo=lambda *a, **k: None)
        timings[backend] = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(cpu_seconds() - cpu, 1)}
        print(f"forgetting ({backend}): wall {timings[backend]['wall_s']} s, CPU {timings[backend]['cpu_s']} s", flush=True)
    same = json.loads((args.out / ANSWERS).read_text()) == json.loads((args.study / "forgetting" / ANSWERS).read_text())
    diffs = {f"{b}/{p.stem}": max_diffs(json.loads(p.read_text()),
                                        json.loads((args.study / "forgetting" / b / p.name).read_text()))
             for b in settings["backends"] for p in sorted((args.out / b).glob("*.json"))}
    print(f"base answers identical to the study's: {same}")
    for k, v in diffs.items():
        print(k, {n: (f"{x:.2e}" if isinstance(x, float) else x) for n, x in v.items()})
    (args.out / "timings.json").write_text(json.dumps({"timings": timings, "answers_identical": same, "diffs": diffs},
                                                      indent=1))


if __name__ == "__main__":
    main()
