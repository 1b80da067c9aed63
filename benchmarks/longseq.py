"""`cli.py bench --lengths 512,2048,4096,8192`: memory and speed against sequence length.

For each length L (batch 1, every example exactly L tokens, prompt 30–60 % masked), the four
bench runs (ours-mlx, plain mlx-lm, ours-torch, plain TRL; benchmarks/bench.py's workers, same
LoRA init, same token ids) with and without gradient checkpointing, each in its own process under
a memory watchdog: a run whose resident memory passes `mem_limit` is killed and recorded as
"OOM >limit" (the sweep goes on), so a plain run that would need tens of GiB never takes the
machine down. A run that did not finish before the watchdog kills it gets its highest sampled RSS.

Figures per run: trained tokens/s, MFU counting the attention FLOPs too (at 8192 tokens on a 135M
model they are ~3× the weight FLOPs), peak RSS (getrusage) and the framework's peak
(mx.get_peak_memory; torch.cuda.max_memory_allocated on CUDA; none on a torch CPU), the RSS per
token, and the marginal memory per token between consecutive lengths (constant = linear growth).

Rerunning with the same settings reuses every finished cell (results and OOM/timeout verdicts are
kept under OUT/work), so an interrupted sweep continues where it stopped.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from backends.capabilities import PARITY_PAIR
from benchmarks.bench import (PLAIN, ROOT, _env, _mib, _worker_cmd, _x, families, model_facts, synth_examples, work_dir,
                              target_list)

RUNNERS = (("ours-mlx", "mlx"), ("mlx-lm", "mlx"), ("ours-torch", "torch"), ("trl", "torch"))
LONG = 4096          # from this length on: one measured step, no warm-up (a step is minutes on a CPU)
OOM_MARKERS = ("can't allocate memory", "std::bad_alloc", "MemoryError", "out of memory")


# ------------------------------------------------------------------ watched launch
def _rss(pid: int) -> int:
    """Resident bytes of `pid` and its child processes (0 once gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo += [int(c) for c in fh.read().split()]
        except (OSError, ValueError):
            continue
    return total


def watch(cmd: list[str], env: dict, log: Path, timeout: float, mem_limit: int) -> tuple[str | None, int, int]:
    """Run `cmd` in its own process group, sampling its resident memory every 50 ms; kill the group
    above `mem_limit` bytes or after `timeout` s. Returns (None | "oom" | "timeout", exit code,
    highest RSS sampled)."""
    t0, peak, status = time.time(), 0, None
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        while proc.poll() is None:
            rss = _rss(proc.pid)
            peak = max(peak, rss)
            if rss > mem_limit:
                status = "oom"
            elif time.time() - t0 > timeout:
                status = "timeout"
            if status:
                os.killpg(proc.pid, signal.SIGKILL)     # the group this call started, nothing else
                break
            time.sleep(0.05)
        proc.wait()
    return status, proc.returncode, peak


def launch_watched(spec: dict, work: Path, name: str, timeout: float, mem_limit: int) -> dict:
    """Run one bench worker under `watch`. Returns the worker's result with status "ok", or
    {"status": "oom"|"timeout"|"failed", ...}."""
    spec = dict(spec, result=str(work / f"{name}.result.json"))
    sp = work / f"{name}.spec.json"
    sp.write_text(json.dumps(spec))
    Path(spec["result"]).unlink(missing_ok=True)
    log = work / f"{name}.log"
    t0 = time.time()
    status, returncode, peak = watch(_worker_cmd(sp), _env(spec), log, timeout, mem_limit)
    wall = time.time() - t0
    if status is None and returncode == 0 and Path(spec["result"]).is_file():
        res = json.loads(Path(spec["result"]).read_text())
        res.update(status="ok", wall_s=wall, watch_peak_bytes=peak)
        return res
    text = log.read_text(errors="replace")
    if status is None:
        status = "oom" if any(m in text for m in OOM_MARKERS) else "failed"
    tail = (text.strip().splitlines() or ["(no output)"])[-1][:300]
    return {"status": status, "wall_s": wall, "watch_peak_bytes": peak, "returncode": returncode,
            "log_tail": tail}


# ------------------------------------------------------------------ the sweep
def parse_lengths(text: str) -> list[int]:
    """"512,2048,8192" → [512, 2048, 8192]; a bad list is one clear error (E140)."""
    from common.errors import ConfigError
    try:
        out = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        out = []
    if not out or out[0] < 8:
        raise ConfigError(f"--lengths {text!r} is not a comma list of token counts >= 8", where="--lengths",
                          fix="write e.g. --lengths 512,2048,4096,8192")
    return out


def plan(lengths: list[int], runners) -> list[tuple[int, str, str, bool]]:
    """The cells in the order they are measured, most telling first, so a time budget cuts the
    least: the shortest length with checkpointing (the MFU reference), the longest with it (the
    issue's checks), the shortest without, then the lengths in between, the longest without last
    (the runs most likely to go over the memory limit)."""
    lo, hi, mid = lengths[0], lengths[-1], lengths[1:-1]
    order = [(lo, True), (hi, True), (lo, False)] + [(L, gc) for L in mid for gc in (True, False)] + [(hi, False)]
    seen, out = set(), []
    for L, gc in order:
        for runner, fam in runners:
            if (L, runner, gc) not in seen:
                seen.add((L, runner, gc))
                out.append((L, runner, fam, gc))
    return out


def _cell_name(length: int, runner: str, gc: bool) -> str:
    return f"L{length}-{runner}-{'gc' if gc else 'nogc'}"


def _cached(work: Path, name: str, spec: dict) -> dict | None:
    """A finished cell's verdict (measured, or over the memory limit) when it was run with exactly
    this spec; a run stopped by a timeout or that failed is run again."""
    v = work / f"{name}.verdict.json"
    if not v.is_file():
        return None
    saved = json.loads(v.read_text())
    ok = saved.get("spec") == spec and saved["result"]["status"] in ("ok", "oom")
    return saved["result"] if ok else None


def run_length_sweep(model: str = "embedded", lengths=(512, 2048, 4096, 8192), steps: int = 2, warmup: int = 1,
                     rank: int = 8, backends=PARITY_PAIR, out_dir: Path = Path("runs/bench-long"),
                     echo=print, *, targets="q_proj,v_proj", lr: float = 1e-4, seed: int = 0,
                     dtype: str = "float32", threads: int | None = None, mem_limit_gib: float = 10.0,
                     timeout: float = 1800.0, budget_s: float | None = None) -> dict:
    """Measure every (length, run, checkpointing) cell; write longseq.md/.json/.png into out_dir."""
    from common.config.schema import LoraConfig
    from common.errors import ConfigError
    from common.models.resolve import resolve_model
    from common.training.tokenize import load_tokenizer

    lengths = parse_lengths(",".join(str(x) for x in lengths))
    if steps < 1 or warmup < 0 or mem_limit_gib <= 0:
        raise ConfigError("bench --lengths needs --steps >= 1, --warmup >= 0 and --mem-limit-gib > 0",
                          where="bench options", fix="check --steps/--warmup/--mem-limit-gib")
    fams = families(backends)
    targets = target_list(targets)
    alpha = float(2 * rank)
    model_dir = resolve_model(model)
    _check_context(model_dir, lengths)
    tok = load_tokenizer(model_dir)
    facts = model_facts(model_dir, LoraConfig(rank=rank, alpha=alpha, target_modules=targets))
    out_dir = Path(out_dir)
    work = work_dir(out_dir)
    limits = _Limits(budget_s, timeout, int(mem_limit_gib * 2 ** 30))
    base = dict(model=model, model_dir=str(model_dir), batch_size=1, rank=rank, alpha=alpha, targets=targets,
                lr=lr, seed=seed, dtype=dtype, attn_implementation=None, pad_id=tok.pad_token_id, threads=threads,
                batching="padded")
    echo(f"[bench] length sweep {lengths} on {model} ({facts['params_total']:,} params), batch 1, LoRA r={rank} "
         f"on {','.join(targets) if isinstance(targets, list) else targets}; runs killed above {mem_limit_gib:g} GiB")
    calib = {}
    for fam in fams:
        calib[fam] = _calibrate_in_process(fam, threads, work)
        echo(f"[bench]   {fam} fp32 matmul: {calib[fam]['gflops']:.1f} GFLOP/s")
    limits.start = time.time()
    data = _write_data(lengths, tok, warmup, steps, seed, work)
    cells = _measure(lengths, fams, data, base, work, limits, facts, mem_limit_gib, echo)
    _finish_rows(cells, calib, facts)
    result = {"model": model, "facts": facts, "calibration": calib, "lengths": lengths, "steps": steps,
              "warmup": warmup, "long_from": LONG, "mem_limit_gib": mem_limit_gib, "rank": rank, "targets": targets,
              "threads": threads, "rows": cells, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
              "wall_s": time.time() - limits.start, "cpus": os.cpu_count()}
    _write_sweep(result, out_dir, echo)
    return result


# ------------------------------------------------------------------ run_length_sweep's stages
def _check_context(model_dir: Path, lengths: list[int]) -> None:
    """Refuse a length beyond the model's context before any run is started."""
    from common.errors import ConfigError
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    max_pos = cfg.get("text_config", cfg).get("max_position_embeddings")
    if max_pos and lengths[-1] > int(max_pos):
        raise ConfigError(f"{lengths[-1]} tokens is beyond the model's context (max_position_embeddings "
                          f"{max_pos})", where="--lengths", fix=f"use lengths <= {max_pos}, or a model with a longer context")


@dataclass
class _Limits:
    """The sweep's time budget (counted from `start`, set once the matmul peaks are measured), the
    per-run timeout and the resident-memory cap."""
    budget_s: float | None
    timeout: float
    mem_limit: int
    start: float = 0.0

    def spent(self) -> bool:
        return self.budget_s is not None and time.time() - self.start > self.budget_s

    def run_timeout(self) -> float:
        """The timeout, cut to what is left of the budget (a minute at least)."""
        if self.budget_s is None:
            return self.timeout
        return min(self.timeout, max(60.0, self.budget_s - (time.time() - self.start)))


def _write_data(lengths: list[int], tok, warmup: int, steps: int, seed: int, work: Path) -> dict:
    """{L: (warm-up steps, measured steps, data file, groups)}: every example exactly L tokens,
    written once per length; long lengths get one measured step and no warm-up."""
    from common.training.batching import epoch_order
    from common.runs.io import write_text
    data = {}
    for L in lengths:
        w, s = (0, 1) if L >= LONG else (warmup, steps)
        ex = synth_examples(tok, w + s, L, False, seed, min_frac=1.0)
        warm, main = ex[:w], ex[w:]
        data_file = work / f"data-L{L}.json"
        write_text(data_file, json.dumps({"warm": [[list(r.ids), list(r.mask)] for r in warm],
                                          "main": [[list(r.ids), list(r.mask)] for r in main]}))
        groups = {k: epoch_order(len(pool), 1, seed, 0, "padded", [len(r.ids) for r in pool])
                  for k, pool in (("warm_groups", warm), ("main_groups", main))}
        data[L] = (w, s, data_file, groups)
    return data


def _measure(lengths: list[int], fams: list[str], data: dict, base: dict, work: Path, limits: _Limits,
             facts: dict, mem_limit_gib: float, echo) -> list[dict]:
    """Every cell in `plan` order, one console line each; the rows sorted by length, run, gc."""
    cells, oom_at = [], {}
    for L, runner, fam, gc in plan(lengths, [r for r in RUNNERS if r[1] in fams]):
        w, s, data_file, groups = data[L]
        name = _cell_name(L, runner, gc)
        spec = dict(base, max_length=L, steps=s, warmup=w, runner=runner, backend=fam,
                    grad_checkpointing=gc, data_file=str(data_file), dataset=f"L{L}", **groups)
        shorter_oom = min((x for x in oom_at.get((runner, gc), []) if x < L), default=None)
        res = _cell_result(work, name, spec, shorter_oom, limits, echo)
        if res["status"] == "oom":
            oom_at.setdefault((runner, gc), []).append(L)
        cells.append(_cell_row(L, runner, fam, gc, w, res, facts))
        echo(f"[bench] {name}: {_brief(cells[-1], mem_limit_gib)}")
    order = {r: i for i, (r, _) in enumerate(RUNNERS)}
    cells.sort(key=lambda r: (r["length"], order[r["run"]], r["gc"]))
    return cells


def _cell_result(work: Path, name: str, spec: dict, shorter_oom: int | None, limits: _Limits, echo) -> dict:
    """One cell's result: reused from an earlier sweep, skipped (over the limit at a shorter length
    already, or the budget spent), or measured now and its verdict kept."""
    from common.runs.io import write_text
    res = _cached(work, name, spec)
    if res is not None:
        echo(f"[bench] {name}: reused ({res['status']})")
    elif shorter_oom is not None:
        res = {"status": "oom", "skipped": f"over the limit at {shorter_oom} tokens already"}
    elif limits.spent():
        res = {"status": "skipped", "skipped": "time budget spent"}
    else:
        echo(f"[bench] {name}: running ({spec['warmup']} warm-up + {spec['steps']} measured step(s))...")
        res = launch_watched(spec, work, name, limits.run_timeout(), limits.mem_limit)
        write_text(work / f"{name}.verdict.json", json.dumps({"spec": spec, "result": res}))
    return res


def _write_sweep(result: dict, out_dir: Path, echo) -> None:
    """longseq.json, .md and .png (atomic writes), the table on the console, then where they are."""
    from common.runs.io import write_bytes, write_text
    md = render_sweep(result)
    write_text(out_dir / "longseq.json", json.dumps(result, indent=2, default=str))
    write_text(out_dir / "longseq.md", md)
    write_bytes(out_dir / "longseq.png", plot_sweep(result))
    echo("")
    echo(md)
    echo(f"[bench] wrote {out_dir / 'longseq.md'}, longseq.json and longseq.png")


def _calibrate_in_process(fam: str, threads, work: Path) -> dict:
    """The matmul peak, measured in a watched worker (same environment as the runs)."""
    res = launch_watched({"runner": f"calib-{fam}", "threads": threads}, work, f"calib-{fam}", 600, 4 << 30)
    if res["status"] != "ok":
        from common.errors import TrainingError
        raise TrainingError(f"measuring the {fam} matmul peak failed: {res.get('log_tail')}",
                            where=str(work / f"calib-{fam}.log"), fix="read the log")
    return res


def _cell_row(L: int, runner: str, fam: str, gc: bool, warmup: int, res: dict, facts: dict) -> dict:
    from common.training.longseq import attention_flops_per_token
    row = {"length": L, "run": runner, "backend": fam, "gc": gc, "status": res["status"],
           "note": res.get("skipped") or res.get("log_tail"), "watch_peak": res.get("watch_peak_bytes")}
    if res["status"] != "ok":
        return row
    st, tk = res["step_s"][warmup:], res["tokens"][warmup:]
    attn = attention_flops_per_token(1, facts["num_hidden_layers"], facts["num_attention_heads"], facts["head_dim"])
    flops = sum(facts["flops_per_token"] * n + attn * n * n for n in tk)      # attention grows as n² per row
    row.update(tok_s=sum(tk) / sum(st), step_s=sum(st) / len(st), flops=flops, time=sum(st),
               rss=res["peak_rss_bytes"], fw=res.get("framework_peak_bytes"), loss=res["loss"][-1] if res["loss"] else None,
               calibration=res.get("calibration"))
    return row


def _finish_rows(rows: list[dict], calib: dict, facts: dict) -> None:
    """MFU against the best matmul peak seen, ratios to the plain runs, memory per token."""
    for r in rows:
        c = r.get("calibration")
        if c and c["gflops"] > calib[r["backend"]]["gflops"]:
            calib[r["backend"]]["gflops"] = c["gflops"]
    key = {(r["length"], r["run"], r["gc"]): r for r in rows}
    for r in rows:
        if r["status"] != "ok":
            continue
        r["mfu"] = r["flops"] / r["time"] / (calib[r["backend"]]["gflops"] * 1e9)
        r["rss_per_token"] = r["rss"] / r["length"]
        p = key.get((r["length"], PLAIN.get(r["run"]), r["gc"]))
        r["speed_vs_plain"] = r["tok_s"] / p["tok_s"] if p and p["status"] == "ok" else None
        r["rss_vs_plain"] = r["rss"] / p["rss"] if p and p["status"] == "ok" else None
        shorter = [x for x in rows if x["run"] == r["run"] and x["gc"] == r["gc"] and x["status"] == "ok"
                   and x["length"] < r["length"]]
        if shorter:
            s = max(shorter, key=lambda x: x["length"])
            r["marginal_per_token"] = (r["rss"] - s["rss"]) / (r["length"] - s["length"])
        first = min((x for x in rows if x["run"] == r["run"] and x["gc"] == r["gc"] and x["status"] == "ok"),
                    key=lambda x: x["length"])
        r["mfu_vs_first"] = r["mfu"] / first["mfu"] if first is not r else None


def _brief(r: dict, limit_gib: float) -> str:
    if r["status"] != "ok":
        return _status(r, limit_gib)
    return (f"{r['tok_s']:.1f} tok/s, step {r['step_s']:.1f} s, peak RSS {r['rss'] / 2**20:.0f} MiB"
            + (f", mx peak {r['fw'] / 2**20:.0f} MiB" if r.get("fw") else ""))


def _status(r: dict, limit_gib: float) -> str:
    if r["status"] == "oom":
        return f"OOM >{limit_gib:g} GiB" + (f" ({r['note']})" if r.get("skipped") or "over the limit" in str(r.get("note")) else "")
    if r["status"] == "timeout":
        return "timeout"
    if r["status"] == "skipped":
        return f"skipped ({r['note']})"
    return f"failed: {r.get('note')}"


# ------------------------------------------------------------------ report
def _loss(r: dict) -> str:
    return "" if r.get("loss") is None else f"{r['loss']:.4f}"


def render_sweep(res: dict) -> str:
    from common.training.longseq import attention_flops_per_token
    f, cal, lim = res["facts"], res["calibration"], res["mem_limit_gib"]
    attn8k = attention_flops_per_token(8192, f["num_hidden_layers"], f["num_attention_heads"], f["head_dim"])
    tg = res["targets"] if isinstance(res["targets"], str) else ",".join(res["targets"])
    lines = [f"# twinlora bench — sequence length sweep — {res['date']}", "",
             f"- model: {res['model']} ({f['params_total']:,} parameters, float32; {f['num_hidden_layers']} layers, "
             f"{f['num_attention_heads']} heads × {f['head_dim']}); LoRA r={res['rank']} on {tg} "
             f"({f['n_trainable']:,} trainable); batch 1, every example exactly L tokens, prompt 30–60 % masked",
             f"- below {res['long_from']} tokens: {res['warmup']} warm-up + {res['steps']} measured steps; from "
             f"{res['long_from']} on: 1 measured step, no warm-up (one-off costs such as mlx-lm's compile are "
             "inside it; they are small beside a step of several TFLOP)",
             "- gc = gradient checkpointing per decoder layer (ours: `training.grad_checkpointing`; mlx-lm: "
             "`grad_checkpoint`; TRL: `gradient_checkpointing` with use_reentrant=False)",
             f"- MFU = (4·N_frozen + 6·N_trainable + 6·layers·heads·head_dim·L) FLOP per token × tok/s ÷ "
             f"measured fp32 matmul peak — causal attention scores counted ({attn8k / 1e9:.2f} GFLOP per token at "
             f"8192 vs {f['flops_per_token'] / 1e9:.2f} for the weights); MFU vs first = this MFU ÷ the same run's "
             "at the shortest length",
             "- peak RSS via getrusage; fw peak = mx.get_peak_memory() (MLX; n/a for torch on CPU); RSS/token = "
             "peak RSS ÷ L; marginal = Δ peak RSS ÷ Δ L from the previous length (flat = memory linear in L)",
             f"- every run in its own process under a watchdog that kills it above {lim:g} GiB resident "
             f"(\"OOM >{lim:g} GiB\"; a run over the limit at one length is not retried at longer ones)"]
    for fam, v in cal.items():
        lines.append(f"- measured fp32 matmul (2048²), {fam}: {v['gflops']:.1f} GFLOP/s")
    if res.get("loadavg") is not None:
        lines.append(f"- 1-min load average at the end: {res['loadavg']:.1f} on {res['cpus']} CPUs; sweep wall time "
                     f"{res['wall_s'] / 60:.0f} min")
    lines += ["", "| L | run | gc | trained tok/s | vs plain | step s | MFU (attn incl.) | MFU vs first | "
              "peak RSS MiB | RSS vs plain | fw peak MiB | RSS/token KiB | marginal KiB/token | loss |",
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        gc = "on" if r["gc"] else "off"
        if r["status"] != "ok":
            seen = f" (killed at {_mib(r['watch_peak'])} MiB)" if r["status"] == "oom" and r.get("watch_peak") else ""
            lines.append(f"| {r['length']} | {r['run']} | {gc} | {_status(r, lim)}{seen} | | | | | | | | | | |")
            continue
        marg = r.get("marginal_per_token")
        lines.append(f"| {r['length']} | {r['run']} | {gc} | {r['tok_s']:.1f} | {_x(r['speed_vs_plain'])} | "
                     f"{r['step_s']:.1f} | {100 * r['mfu']:.1f} % | {_x(r.get('mfu_vs_first'))} | {_mib(r['rss'])} | "
                     f"{_x(r['rss_vs_plain'])} | {_mib(r['fw'])} | {r['rss_per_token'] / 1024:.1f} | "
                     f"{'' if marg is None else f'{marg / 1024:.1f}'} | "
                     f"{_loss(r)} |")
    lines += ["", *done_lines(res)]
    return "\n".join(lines) + "\n"


def done_lines(res: dict) -> list[str]:
    """The issue's two checks at the longest length, in words (whatever the outcome)."""
    L = max(res["lengths"])
    key = {(r["length"], r["run"], r["gc"]): r for r in res["rows"]}
    lim = res["mem_limit_gib"]
    out = [f"At {L} tokens:"]
    for ours, plain in PLAIN.items():
        o = key.get((L, ours, True))
        if o is None:
            continue
        if o["status"] != "ok":
            out.append(f"- {ours} with checkpointing: {_status(o, lim)}")
            continue
        for gc in (True, False):
            p = key.get((L, plain, gc))
            if p is None:
                continue
            what = f"{plain} {'with' if gc else 'without'} checkpointing"
            if p["status"] == "ok":
                out.append(f"- {ours} with checkpointing: peak RSS {_mib(o['rss'])} MiB = {o['rss'] / p['rss']:.2f}× "
                           f"{what} ({_mib(p['rss'])} MiB)")
            elif p["status"] == "oom":
                out.append(f"- {ours} with checkpointing: peak RSS {_mib(o['rss'])} MiB; {what} went over "
                           f"{lim:g} GiB (< {o['rss'] / (lim * 2**30):.2f}×)")
        if o.get("mfu_vs_first") is not None:
            first = min(res["lengths"])
            out.append(f"- {ours} with checkpointing: MFU {100 * o['mfu']:.1f} % = {o['mfu_vs_first']:.2f}× its "
                       f"MFU at {first} tokens")
    return out


def plot_sweep(res: dict) -> bytes:
    """Peak RSS vs length for every run (solid: no checkpointing, dashed: checkpointing; × = killed
    over the limit), and MFU vs length beside it; figure, style and PNG from common.evaluation.plots."""
    from common.evaluation import plots
    fig, (ax_m, ax_f) = plots.figure(11, 4.5, 2)
    colors = {"ours-mlx": "tab:blue", "mlx-lm": "tab:cyan", "ours-torch": "tab:red", "trl": "tab:orange"}
    lim = res["mem_limit_gib"]
    for run, color in colors.items():
        for gc in (False, True):
            rows = [r for r in res["rows"] if r["run"] == run and r["gc"] == gc]
            ok = [r for r in rows if r["status"] == "ok"]
            if not any(r["status"] in ("ok", "oom") for r in rows):
                continue                  # nothing measured for this run: no legend entry
            style = "--" if gc else "-"
            label = f"{run}{' + gc' if gc else ''}"
            ax_m.plot([r["length"] for r in ok], [r["rss"] / 2**30 for r in ok], style, color=color, marker="o",
                      label=label)
            oom = [r for r in rows if r["status"] == "oom"]
            if oom:
                ax_m.plot([r["length"] for r in oom], [lim] * len(oom), "x", color=color, markersize=10)
            ax_f.plot([r["length"] for r in ok], [100 * r["mfu"] for r in ok], style, color=color, marker="o",
                      label=label)
    ax_m.axhline(lim, color="grey", lw=0.8, ls=":")
    ax_m.text(max(res["lengths"]), lim, f"watchdog {lim:g} GiB (× = killed) ", va="bottom", ha="right", fontsize=8,
              color="grey")
    for ax, title, ylabel in ((ax_m, "peak memory (RSS)", "GiB"), (ax_f, "MFU, attention FLOPs counted", "%")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(res["lengths"])
        ax.set_xticklabels([str(x) for x in res["lengths"]])
        # one legend (left panel) for both; upper left keeps it clear of the watchdog label
        plots.style(ax, title=title, xlabel="sequence length (tokens, batch 1)", ylabel=ylabel, zero=True,
                    legend=False)
    ax_m.legend(fontsize=plots.LEGEND_SIZE, loc="upper left")
    fig.suptitle(f"twinlora bench: {res['model']}, LoRA r={res['rank']}", fontsize=10)
    return plots.png(fig)
