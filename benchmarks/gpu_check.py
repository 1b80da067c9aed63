"""`scripts/gpu-check.sh`: one run that proves the CUDA path on one NVIDIA GPU and prints one table.

Rows (each through the real `jobs.trainer.train` / `jobs.parity`, one after another in this
process, the peak memory counter reset before each):

- torch on CUDA, float32 and bfloat16, eager vs SDPA attention (flash_attention_2 where the
  flash-attn package is importable), on the embedded models;
- QLoRA: bitsandbytes NF4 + double quantization with the paged 8-bit AdamW;
- parity: one torch-CUDA adapter loaded on torch (CUDA) and on MLX (CPU), fp32 tolerance;
- MLX on CUDA (where `mlx[cuda]` installed and sees the GPU) against torch on CUDA, same config;
- throughput and MFU on a ~1B-parameter model built from Llama-3.2-1B's config with random
  weights (bf16, SDPA), against the bf16 matmul peak measured in the same run.

tokens/s = trained (non-padding) tokens per second over the steps after the first (the first one
pays for kernel selection and allocation). Model FLOPs per token (LoRA) as in benchmarks/bench.py:
4·N_frozen + 6·N_trainable (attention-score FLOPs left out, a conservative MFU).

`--dry-run` runs every row on the CPU with tiny random models (float32 peak instead of bf16, the
paged optimizer replaced by AdamW, MLX-on-CUDA skipped), so CI keeps the script from rotting.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backends.capabilities import PARITY_PAIR  # noqa: E402
from benchmarks.check_rows import RowBook  # noqa: E402

# Llama-3.2-1B's config.json (the architecture only; the weights here are random).
LLAMA_3_2_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                    rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
                    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                     "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                     "original_max_position_embeddings": 8192})
# The same shape scaled down for --dry-run.
TINY_LLAMA = dict(LLAMA_3_2_1B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=16384)
# The embedded models (common/models/resolve.py): SmolLM2-135M-Instruct and Gemma 3 270M.
EMBEDDED = ["embedded", "gemma3-270m"]

COLUMNS = ["check", "backend", "device", "model", "dtype", "attention", "tokens/s", "MFU", "peak memory", "result"]


def quiet(*a, **k):
    pass


# ------------------------------------------------------------------ models and data
def random_llama(out: Path, shape: dict, tokenizer_dir: Path, dtype: str) -> Path:
    """A Llama with `shape` and random weights (std 0.02), saved as safetensors with the tokenizer of
    `tokenizer_dir` (its ids fit any vocabulary at least as large)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from common.models.resolve import normalize_config
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = LlamaConfig(**{k: v for k, v in shape.items() if k != "rope_parameters"},
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg.rope_parameters = dict(shape["rope_parameters"])
    assert cfg.vocab_size >= len(tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    normalize_config(out)  # rope settings at the top level too, where mlx-lm reads them
    del model
    gc.collect()
    return out


def write_text_data(path: Path, tokenizer_dir: Path, n: int, max_length: int) -> Path:
    """`n` {"text"} rows cut from real text, each longer than max_length tokens (so every row is
    exactly max_length after truncation and every step trains the same number of tokens)."""
    from transformers import AutoTokenizer

    from benchmarks.bench import _text_corpus
    from common.runs.io import write_jsonl
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = tok(_text_corpus(), add_special_tokens=False)["input_ids"]
    while len(ids) < (n + 1) * max_length:
        ids = ids + ids
    rows = [{"text": tok.decode(ids[i * max_length: (i + 2) * max_length])} for i in range(n)]
    write_jsonl(path, rows)
    return path


# ------------------------------------------------------------------ measurements
def matmul_peak(device: str, dtype: str, n: int, reps: int) -> float:
    """FLOP/s of an n×n×n matmul in `dtype` on `device`, best of `reps` timed runs."""
    import torch
    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t) / 10)
    return 2 * n ** 3 / best


def steady_tokens_per_s(run_dir: Path) -> float | None:
    """Trained tokens per second over the steps after the first, from the run's log."""
    from common.runs.run_dir import RunDir
    recs = [r for r in RunDir(run_dir).read_log() if r.get("event") == "train"][1:]
    secs = sum(r["step_s"] for r in recs)
    return sum(r["tokens"] for r in recs) / secs if recs and secs > 0 else None


def reset_peak(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def set_mlx_device(kind: str) -> None:
    import mlx.core as mx
    mx.set_default_device(mx.gpu if kind == "cuda" else mx.cpu)


def mlx_cuda_available() -> bool:
    try:
        import mlx.core as mx
        return bool(getattr(mx, "cuda", None) and mx.cuda.is_available())
    except Exception:  # mlx missing or built without CUDA
        return False


class Check(RowBook):
    columns = COLUMNS

    """Runs the rows, collects them, renders the table."""

    def __init__(self, args, work: Path):
        import torch
        self.args, self.work, self.rows, self.runs = args, work, [], {}
        self.device = "cpu" if args.dry_run else "cuda"
        if not args.dry_run and not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device visible to torch — fix: run on an NVIDIA GPU machine, "
                             "or pass --dry-run")
        self.steps = 3 if args.dry_run else 12
        self.batch, self.seq = (2, 64) if args.dry_run else (4, 512)
        self.peak_dtype = "float32" if args.dry_run else "bfloat16"
        self.peak = matmul_peak(self.device, self.peak_dtype, 512 if args.dry_run else 8192, 3 if args.dry_run else 5)


    def train_row(self, check: str, model: str, backend: str, dtype: str, attn: str | None,
                  quantize: str | None = None, optimizer: str = "adamw", mlx_device: str = "cpu",
                  label: str | None = None) -> dict:
        from benchmarks.bench import model_facts
        from common.config.schema import load_config
        from common.models.resolve import resolve_model
        from jobs.trainer import train
        out = self.work / f"run-{len(self.rows):02d}"
        cfg = load_config(overrides={
            "model": {"path": model, "dtype": dtype, "quantize": quantize, "attn_implementation": attn},
            "data": {"train": str(self.data), "template": "raw", "mask_prompt": False, "max_length": self.seq},
            "lora": {"rank": 16, "alpha": 32, "target_modules": "all-linear"},
            "training": {"steps": self.steps, "batch_size": self.batch, "lr": 1e-4, "save_every": 0,
                         "log_every": 1, "optimizer": optimizer, "warmup_steps": 0},
            "output": str(out)})
        device = self.device if backend == "torch" else mlx_device
        if backend == "mlx":
            set_mlx_device(mlx_device)
        reset_peak(device)
        summary = train(cfg, backend, echo=quiet)
        tps = steady_tokens_per_s(out)
        facts = model_facts(resolve_model(model), cfg.lora)
        mfu = facts["flops_per_token"] * tps / self.peak if tps and device == self.device else None
        mem = summary.get("peak_memory_bytes")
        kind = "GPU" if device == "cuda" else ("RSS" if backend == "torch" else "MLX")
        self.runs[(model, backend, dtype, attn, quantize)] = out
        return self.add(check, f"ok, loss {summary['final_loss']:.3f}", backend=backend, device=device,
                        model=label or Path(model).name, dtype=dtype + (f" + {quantize}" if quantize else ""),
                        attention=attn or "default", **{"tokens/s": f"{tps:,.0f}" if tps else "—",
                                                        "MFU": f"{100 * mfu:.1f}%" if mfu else "—",
                                                        "peak memory": f"{mem / 2**20:,.0f} MiB {kind}" if mem else "—"})

    # -------------------------------------------------------------- the rows
    def run(self) -> list[dict]:
        from common.models.resolve import resolve_model
        import importlib.util
        dry = self.args.dry_run
        if dry:
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_model import build_tiny_model
            models = [(str(build_tiny_model(self.work / "tiny-llama")), "tiny-llama")]
        else:
            models = [(m, resolve_model(m).name) for m in EMBEDDED]
        tok_dir = Path(resolve_model(models[0][0]))
        self.data = write_text_data(self.work / "train.jsonl", tok_dir, self.batch * (self.steps + 1), self.seq)
        attns = ["eager", "sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
        dtypes = ["float32", "bfloat16"]

        for model, label in models:
            for dtype in dtypes:
                for attn in attns:
                    if attn == "flash_attention_2" and dtype == "float32":
                        continue  # flash attention runs in 16-bit only
                    self.guarded("train", lambda: self.train_row("train", model, "torch", dtype, attn, label=label),
                                 backend="torch", model=label, dtype=dtype, attention=attn)
        model, label = models[0]
        optimizer = "adamw" if dry else "paged_adamw_8bit"
        self.guarded("QLoRA NF4 + " + optimizer, lambda: self.train_row(
            "QLoRA NF4 + " + optimizer, model, "torch", "float32" if dry else "bfloat16", "sdpa",
            quantize="4bit", optimizer=optimizer, label=label), backend="torch", model=label)
        self.guarded("parity torch-" + self.device + " vs mlx-cpu", lambda: self.parity_row(model, label),
                     model=label)
        if mlx_cuda_available():
            for backend in PARITY_PAIR:
                self.guarded(f"{backend} on CUDA", lambda b=backend: self.train_row(
                    f"{b} on CUDA", model, b, "bfloat16", None if b == "mlx" else "sdpa", mlx_device="cuda",
                    label=label), backend=backend, model=label)
        else:
            self.add("mlx on CUDA", "skipped: mlx[cuda] not installed or no CUDA device for mlx", backend="mlx")
        self.guarded("MFU, Llama-3.2-1B shape", lambda: self.mfu_row(tok_dir), model="llama-3.2-1b-random")
        return self.rows

    def parity_row(self, model: str, label: str) -> dict:
        """A float32 torch adapter (trained on this device), loaded on torch here and on MLX on the CPU."""
        from jobs.parity import PROMPTS, run_parity
        from jobs.session import open_model
        key = (model, "torch", "float32", "sdpa", None)
        if key not in self.runs:  # the fp32 SDPA row failed or did not run
            self.train_row("parity: train torch fp32", model, "torch", "float32", "sdpa", label=label)
        adapter = self.runs[key] / "adapter"
        set_mlx_device("cpu")
        sessions = {"torch": open_model("torch", model, adapter=adapter), "mlx": open_model("mlx", model, adapter=adapter)}
        rep = run_parity(sessions, PROMPTS, 16)
        return self.add(f"parity torch-{self.device} vs mlx-cpu",
                        f"{'PASS' if rep['pass'] else 'FAIL'}: max |Δlogit| {rep['max_abs_logit_diff']:.2e}, "
                        f"KL {rep['mean_kl']:.1e}, same text {rep['same_greedy_text']}",
                        backend="torch+mlx", device=f"{self.device}+cpu", model=label, dtype="float32")

    def mfu_row(self, tok_dir: Path) -> dict:
        shape, name = (TINY_LLAMA, "llama-3.2-1b-shape (tiny)") if self.args.dry_run else (LLAMA_3_2_1B, "llama-3.2-1b-random")
        dtype = "float32" if self.args.dry_run else "bfloat16"
        model = random_llama(self.work / "llama-1b", shape, tok_dir, dtype)
        return self.train_row("MFU, Llama-3.2-1B shape", str(model), "torch", dtype, "sdpa", label=name)


# ------------------------------------------------------------------ report
def device_choices(args) -> str:
    """What common/models/devices.py chose for the torch rows (the MLX rows: MLX's CPU or CUDA choices)."""
    from common.models.devices import torch_choices
    return torch_choices("cpu" if args.dry_run else "cuda", 512, grad_checkpointing=False, long_rows=4096).describe()


def render(rows: list[dict], args, peak: float, peak_dtype: str, device_name: str, seconds: float) -> str:
    import torch
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    try:
        import mlx.core as mx
        mlx_v = getattr(mx, "__version__", "?")
    except ImportError:
        mlx_v = "not installed"
    try:
        import bitsandbytes as bnb
        bnb_v = bnb.__version__
    except ImportError:
        bnb_v = "not installed"
    head = ("# GPU check (`scripts/gpu-check.sh`)\n\n"
            + ("**Dry run on the CPU with tiny random models** (what CI runs so the script cannot rot); "
               "these are not GPU figures.\n\n" if args.dry_run else "")
            + f"Device: {device_name}; torch {torch.__version__}, mlx {mlx_v}, bitsandbytes {bnb_v}, "
            f"Python {platform.python_version()}; {peak_dtype} matmul peak measured here: "
            f"{peak / 1e12:.3g} TFLOP/s; whole check {seconds:.0f} s.\n\n"
            f"Device choices measured (`common/models/devices.py`): {device_choices(args)}.\n\n")
    notes = ("\n\ntokens/s: trained tokens per second after the first step. MFU = (4·N_frozen + 6·N_trainable) "
             "× tokens/s ÷ the measured matmul peak (attention-score FLOPs left out). Peak memory: "
             "`torch.cuda.max_memory_allocated` (GPU), MLX's peak (MLX), process peak RSS (RSS, CPU).\n")
    return head + "\n".join(lines) + notes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny random models (CI)")
    ap.add_argument("--output", default=str(ROOT / "docs" / "gpu-check.md"), help="Markdown report to write")
    ap.add_argument("--json", help="Also write the rows as JSON here")
    args = ap.parse_args(argv)
    import torch

    from common.runs.io import write_text
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="twinlora-gpu-check-") as work:
        check = Check(args, Path(work))
        print(" | ".join(COLUMNS), flush=True)
        rows = check.run()
    name = torch.cuda.get_device_name(0) if check.device == "cuda" else f"CPU ({platform.machine()})"
    report = render(rows, args, check.peak, check.peak_dtype, name, time.time() - t0)
    write_text(Path(args.output), report)
    print("\n" + report)
    print(f"[gpu-check] wrote {args.output}")
    if args.json:
        write_text(Path(args.json), json.dumps(rows, indent=1))
    return 1 if any(r["result"].startswith("FAIL") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
