"""Every model.quantize scheme on its backend against the float base (issue 33): the damage (mean KL,
same argmax, on the first validation records), the base weights in memory, training tokens/s and the
validation loss before and after the same short training. Prints the markdown table of docs/variants.md.

    nice -n 10 python -m benchmarks.quant_schemes --model embedded --steps 2 [--backend mlx] [--no-train]

Settings are small so that a shared 2-core CPU gets through: the first --valid-records validation
records (the damage is measured on the first 4 of them, as `train` does), batch 1, --steps steps.
Training tokens/s = the tokens of the training steps / their seconds (log.jsonl; validations
excluded). --no-train measures damage and memory only.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from backends.capabilities import PARITY_PAIR

ROOT = Path(__file__).resolve().parents[1]
LEGI = ROOT / "data" / "legi" / "LEGITEXT000031366350_crpa_sample.json"


def legi_data(work: Path, valid_records: int) -> Path:
    """The legi demo records (train.jsonl + the first `valid_records` of valid.jsonl), prepared once."""
    out = work / "legi"
    if not (out / "train.jsonl").exists():
        subprocess.run([sys.executable, str(ROOT / "cli.py"), "prepare", "legi", str(LEGI), "--out", str(out)],
                       check=True, capture_output=True)
        rows = (out / "valid.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (out / "valid.jsonl").write_text("".join(rows[:valid_records]), encoding="utf-8")
    return out


def training_tokens_per_s(run: Path) -> float | None:
    """Tokens per second of the training steps alone (log.jsonl's train events)."""
    steps = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r.get("event") == "train"]
    seconds = sum(r["step_s"] for r in steps)
    return sum(r["tokens"] for r in steps) / seconds if seconds else None


def damage_only(model: str, backend: str, scheme: str | None, data: Path, max_length: int) -> dict:
    from backends import get_backend
    from common.config.schema import load_config
    from common.models.resolve import resolve_model
    from jobs import damage
    from jobs.train_setup import prepare_data
    from jobs.session import open_model
    cfg = load_config(overrides={"model": {"path": model}, "data": {"train": str(data / "train.jsonl"),
                                 "valid": str(data / "valid.jsonl"), "max_length": max_length}})
    _, train, valid, _ = prepare_data(cfg, open_model(backend, model).tokenizer)
    source, ids = damage.damage_ids(valid, train)
    cls, model_dir = get_backend(backend), resolve_model(model)
    if scheme is None:
        be = cls(model_dir)
        return {"base_weight_bytes": be.base_weight_bytes()}
    ref = damage.float_logits(cls, model_dir, "float32", ids)
    be = cls(model_dir, quantize=scheme)
    return {**damage.measure(be, ref, ids, be.scheme, "float32", source), "base_weight_bytes": be.base_weight_bytes()}


def trained(model: str, backend: str, scheme: str | None, data: Path, out: Path, steps: int, max_length: int,
            lr: float) -> dict:
    from common.config.schema import load_config
    from jobs.trainer import train
    cfg = load_config(overrides={
        "model": {"path": model, "quantize": scheme},
        "data": {"train": str(data / "train.jsonl"), "valid": str(data / "valid.jsonl"), "max_length": max_length},
        "training": {"steps": steps, "batch_size": 1, "lr": lr, "save_every": 0, "eval_every": 0, "seed": 0,
                     "log_every": 1},
        "lora": {"rank": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}, "output": str(out)})
    s = train(cfg, backend, overwrite=True, echo=lambda *a: None)
    return {**s.get("quantization_damage", {}), **s, "tokens_per_s": training_tokens_per_s(out)}


def main() -> None:
    from common.models.quantize import SCHEMES
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--valid-records", type=int, default=4)
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--backend", choices=list(PARITY_PAIR), help="only this backend's schemes (and float32 on it)")
    ap.add_argument("--schemes", nargs="*", default=["float", *SCHEMES])
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="twinlora-qschemes-"))
    data = legi_data(work, a.valid_records)
    print(f"| {a.model} | backend | mean KL vs float | same argmax | base weights MiB | training tokens/s | "
          "val loss before | val loss after |")
    print("|---|---|---|---|---|---|---|---|")
    for scheme in a.schemes:
        scheme = None if scheme in (None, "float") else scheme
        backends = [SCHEMES[scheme].backend] if scheme else list(PARITY_PAIR)
        for b in [b for b in backends if b == (a.backend or b)]:
            r = (damage_only(a.model, b, scheme, data, a.max_length) if a.no_train else
                 trained(a.model, b, scheme, data, work / f"{b}-{scheme}", a.steps, a.max_length, a.lr))
            f = lambda k, fmt: format(r[k], fmt) if r.get(k) is not None else "—"  # noqa: E731
            print(f"| {scheme or 'float32'} | {b} | {f('mean_kl', '.4f')} | {f('argmax_agree', '.1%')} | "
                  f"{r['base_weight_bytes'] / 2**20:.1f} | {f('tokens_per_s', '.2g')} | {f('val_loss_before', '.4f')} | "
                  f"{f('val_loss', '.4f')} |", flush=True)


if __name__ == "__main__":
    main()
