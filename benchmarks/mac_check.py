"""`scripts/mac-check.sh`: one run that proves the Apple-silicon path and prints one table.

Rows, through the real training and parity code, one after another:
- train on MLX (Metal) and on torch (MPS, then CPU) on the embedded model;
- parity: the MLX adapter loaded on torch and on MLX (fp32 tolerance, jobs/parity.py);
- our chunked attention against `mx.fast.scaled_dot_product_attention` at 512 / 2048 / 8192 tokens,
  forward + backward: time, MLX peak memory, max |Δ| of output and gradients;
- ours against plain mlx-lm's trainer (`mlx_lm.tuner.trainer.train`, what `mlx_lm lora` runs) on the
  same data and LoRA init: tokens/s and peak memory (benchmarks/bench.py, one subprocess each).
The device choices of common/models/devices.py that were measured are printed and written with the table.

`--dry-run` runs the same code on the CPU with tiny random models (MPS row skipped, attention at
64/128/256 tokens in chunks of 32), so CI keeps it from rotting; its figures are not Mac figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.check_rows import RowBook  # noqa: E402
from benchmarks.gpu_check import quiet, steady_tokens_per_s, write_text_data  # noqa: E402

COLUMNS = ["check", "backend", "device", "tokens", "tokens/s", "time (ms)", "peak memory", "result"]


def mps_available() -> bool:
    import torch
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def attention_row(L: int, chunk: int, heads: int = 9, kv_heads: int = 3, head_dim: int = 64) -> dict:
    """Chunked attention vs mx.fast SDPA at L tokens (causal, fwd+bwd): best-of-3 ms, MLX peak, max |Δ|."""
    import mlx.core as mx
    import numpy as np

    from backends.mlx.attention import flash_attention
    from backends.mlx.device import device_kind
    from common.models.devices import mlx_choices
    exp = mlx_choices(device_kind(), L, chunk=chunk, compiled_rows=10 ** 9).exp(False)
    from benchmarks.mlx_attention import attention_inputs
    q, k, v, w = attention_inputs(L, heads, kv_heads, head_dim)
    scale = head_dim ** -0.5
    runs = {"chunked": lambda q, k, v: flash_attention(q, k, v, scale, "causal", chunk, exp=exp)[0],
            "mx.fast": lambda q, k, v: mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")}
    out = {}
    for name, f in runs.items():
        grad = mx.value_and_grad(lambda q, k, v: (f(q, k, v) * w).sum(), argnums=(0, 1, 2))
        best = float("inf")
        for _ in range(3):
            mx.synchronize() if hasattr(mx, "synchronize") else None
            mx.reset_peak_memory()
            t = time.perf_counter()
            res = grad(q, k, v)
            mx.eval(res)
            best = min(best, time.perf_counter() - t)
        out[name] = {"ms": 1e3 * best, "peak": int(mx.get_peak_memory()), "val": res}
    (_, ga), (_, gb) = out["chunked"]["val"], out["mx.fast"]["val"]
    diff = max(float(np.abs(np.array(x) - np.array(y)).max()) for x, y in zip(ga, gb))
    rel = diff / max(float(np.abs(np.array(g)).max()) for g in gb)
    return {"L": L, "exp": exp, "rel_grad_diff": rel, **{f"{n}_{k}": v for n, o in out.items()
                                                        for k, v in o.items() if k != "val"}}


class Check(RowBook):
    columns = COLUMNS

    def __init__(self, args, work: Path):
        self.args, self.work, self.rows = args, work, []
        dry = args.dry_run
        self.steps, self.batch, self.seq = (3, 2, 64) if dry else (12, 4, 512)
        self.lengths, self.chunk = ((64, 128, 256), 32) if dry else ((512, 2048, 8192), 256)


    def train_row(self, backend: str, device: str) -> dict:
        from common.config.schema import load_config
        from jobs.trainer import train
        out = self.work / f"run-{backend}-{device}"
        cfg = load_config(overrides={
            "model": {"path": self.model},
            "data": {"train": str(self.data), "template": "raw", "mask_prompt": False, "max_length": self.seq},
            "lora": {"rank": 16, "alpha": 32, "target_modules": "all-linear"},
            "training": {"steps": self.steps, "batch_size": self.batch, "lr": 1e-4, "save_every": 0, "log_every": 1,
                         "warmup_steps": 0}, "output": str(out)})
        if backend == "torch":
            os.environ["TWINLORA_DEVICE"] = device
        try:
            summary = train(cfg, backend, echo=quiet)
        finally:
            os.environ.pop("TWINLORA_DEVICE", None)
        self.runs[(backend, device)] = out
        tps, mem = steady_tokens_per_s(out), summary.get("peak_memory_bytes")
        return self.add("train", f"ok, loss {summary['final_loss']:.3f}", backend=backend, device=device,
                        tokens=self.seq, **{"tokens/s": f"{tps:,.0f}" if tps else "—",
                                            "peak memory": f"{mem / 2**20:,.0f} MiB" if mem else "—"})

    def parity_row(self) -> dict:
        from jobs.parity import PROMPTS, run_parity
        from jobs.session import open_model
        adapter = self.runs[("mlx", self.mlx_device)] / "adapter"
        sessions = {"torch": open_model("torch", self.model, adapter=adapter),
                    "mlx": open_model("mlx", self.model, adapter=adapter)}
        rep = run_parity(sessions, PROMPTS, 16)
        return self.add("parity mlx adapter: torch vs mlx",
                        f"{'PASS' if rep['pass'] else 'FAIL'}: max |Δlogit| {rep['max_abs_logit_diff']:.2e}, "
                        f"KL {rep['mean_kl']:.1e}, same text {rep['same_greedy_text']}", backend="torch+mlx",
                        device=f"{self.torch_device}+{self.mlx_device}")

    def attention_rows(self) -> None:
        for L in self.lengths:
            def one(L=L):
                r = attention_row(L, self.chunk)
                self.attention.append(r)
                for name in ("chunked", "mx.fast"):
                    self.add(f"attention {name}" + (f" (exp={r['exp']})" if name == "chunked" else ""),
                             "ok" if r["rel_grad_diff"] < 1e-4 else "FAIL",
                             backend="mlx", device=self.mlx_device, tokens=L,
                             **{"time (ms)": f"{r[name + '_ms']:.1f}", "peak memory": f"{r[name + '_peak'] / 2**20:,.1f} MiB"})
                self.rows[-1]["result"] += f", max rel |Δgrad| {r['rel_grad_diff']:.1e}"
            self.guarded(f"attention {L}", one, backend="mlx", tokens=L)

    def plain_rows(self) -> None:
        from benchmarks.bench import run_bench
        res = run_bench(model=self.model, steps=self.steps, warmup=1, repeats=1, batch_size=self.batch,
                        max_length=self.seq, backends=["mlx"], ragged=False, out_dir=self.work / "bench", echo=quiet,
                        timeout=900)
        for r in res["rows"]:
            ratio = f", {r['speed_vs_plain']:.2f}× plain's tokens/s" if r.get("speed_vs_plain") else ""
            self.add(f"vs plain mlx-lm: {r['run']}", "ok" + ratio, backend="mlx", device=self.mlx_device,
                     tokens=self.seq, **{"tokens/s": f"{r['tok_s']:,.0f}",
                                         "peak memory": f"{(r['fw'] or 0) / 2**20:,.0f} MiB MLX, {r['rss'] / 2**20:,.0f} MiB RSS"})

    def run(self) -> list[dict]:
        from backends.mlx.device import device_kind
        from common.models.resolve import resolve_model
        self.runs, self.attention = {}, []
        if self.args.dry_run:
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_model import build_tiny_model
            self.model = str(build_tiny_model(self.work / "tiny-llama"))
        else:
            self.model = "embedded"
        self.data = write_text_data(self.work / "train.jsonl", Path(resolve_model(self.model)),
                                    self.batch * (self.steps + 2), self.seq)
        self.mlx_device = "metal" if device_kind() == "gpu" else "cpu"
        self.guarded("train", lambda: self.train_row("mlx", self.mlx_device), backend="mlx")
        if mps_available():
            self.guarded("train", lambda: self.train_row("torch", "mps"), backend="torch", device="mps")
        else:
            self.add("train", "skipped: torch sees no MPS device", backend="torch", device="mps")
        self.guarded("train", lambda: self.train_row("torch", "cpu"), backend="torch", device="cpu")
        self.torch_device = "mps" if ("torch", "mps") in self.runs else "cpu"
        self.guarded("parity", self.parity_row)
        self.attention_rows()
        self.guarded("vs plain mlx-lm", self.plain_rows, backend="mlx")
        return self.rows


def choices_lines(lengths, chunk: int) -> list[str]:
    """The device choices this run measured (common/models/devices.py), one line per attention length."""
    from backends.mlx.device import device_kind, memory_bytes
    from common.models.devices import mlx_choices, sdpa_attention_bytes
    kind = device_kind()
    return [f"- {L} tokens: " + mlx_choices(kind, L, chunk=chunk, compiled_rows=2048,
                                             attention_bytes=sdpa_attention_bytes(1, 9, L),
                                             memory_bytes=memory_bytes() if kind != "cpu" else None).describe()
            for L in lengths]


def render(rows: list[dict], check: Check, seconds: float) -> str:
    import mlx.core as mx
    import torch
    table = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    table += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    head = ("# Mac check (`scripts/mac-check.sh`)\n\n"
            + ("**Dry run on the CPU with tiny random models** (what CI runs so the script cannot rot); "
               "these are not Apple-silicon figures.\n\n" if check.args.dry_run else "")
            + f"Machine: {platform.platform()} ({platform.machine()}); mlx {getattr(mx, '__version__', '?')}, "
            f"torch {torch.__version__}, Python {platform.python_version()}; {time.strftime('%Y-%m-%d')}; "
            f"whole check {seconds:.0f} s.\n\nDevice choices measured (`common/models/devices.py`):\n"
            + "\n".join(choices_lines(check.lengths, check.chunk)) + "\n\n")
    notes = ("\n\ntokens/s: trained tokens per second after the first step. Attention rows: one layer's causal "
             "attention (9 heads, 3 kv heads, head dim 64, batch 1), forward + backward, best of 3; peak memory "
             "is MLX's. The plain mlx-lm row is `mlx_lm.tuner.trainer.train` (what `mlx_lm lora` runs) on the "
             "same examples, order and LoRA init (`benchmarks/bench.py`).\n")
    return head + "\n".join(table) + notes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny random models (CI)")
    ap.add_argument("--output", help="Markdown report to write (default: docs/mac-check.md; with --dry-run a temp file)")
    ap.add_argument("--json", help="Also write the rows as JSON here")
    args = ap.parse_args(argv)
    from backends import get_backend
    from common.runs.io import write_text
    get_backend("mlx")                       # OpenBLAS preloaded before mlx, as in training
    if args.dry_run:
        import mlx.core as mx
        mx.set_default_device(mx.cpu)
    output = Path(args.output) if args.output else (
        Path(tempfile.mkdtemp(prefix="twinlora-mac-check-")) / "mac-check.md" if args.dry_run
        else ROOT / "docs" / "mac-check.md")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="twinlora-mac-check-") as work:
        check = Check(args, Path(work))
        print(" | ".join(COLUMNS), flush=True)
        rows = check.run()
    report = render(rows, check, time.time() - t0)
    write_text(output, report)
    print("\n" + report)
    print(f"[mac-check] wrote {output}")
    if args.json:
        write_text(Path(args.json), json.dumps({"rows": rows, "attention": check.attention}, indent=1, default=str))
    return 1 if any(r["result"].startswith("FAIL") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
