"""Every model.quantize scheme on its backend against the float base (issue 33): the damage (mean KL,
same argmax, on the first validation records), the base weights in memory, training tokens/s and the
validation loss after the same short training. Prints the markdown table of docs/variants.md.

    nice -n 19 python -m benchmarks.quant_schemes --model embedded --steps 2 [--no-train]

Settings are small so that a shared 2-core CPU gets through; --no-train measures damage and memory only.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEGI = ROOT / "data" / "legi" / "LEGITEXT000031366350_crpa_sample.json"


def legi_data(work: Path) -> Path:
    """The legi demo records (train.jsonl + valid.jsonl), prepared once."""
    out = work / "legi"
    if not (out / "train.jsonl").exists():
        subprocess.run([sys.executable, str(ROOT / "cli.py"), "prepare", "legi", str(LEGI), "--out", str(out)],
                       check=True, capture_output=True)
    return out


def damage_only(model: str, backend: str, scheme: str | None, data: Path, max_length: int) -> dict:
    from backends import get_backend
    from common.config.schema import load_config
    from common.models.resolve import resolve_model
    from jobs import damage
    from jobs.train_setup import prepare_data
    from jobs.session import open_model
    cfg = load_config(overrides={"model": {"path": model}, "data": {"train": str(data / "train.jsonl"),
                                 "valid": str(data / "valid.jsonl"), "max_length": max_length}})
    _, train, valid = prepare_data(cfg, open_model(backend, model).tokenizer)
    source, ids = damage.damage_ids(valid, train)
    cls, model_dir = get_backend(backend), resolve_model(model)
    if scheme is None:
        be = cls(model_dir)
        return {"base_weight_bytes": be.base_weight_bytes()}
    ref = damage.float_logits(cls, model_dir, "float32", ids)
    be = cls(model_dir, quantize=scheme)
    return {**damage.measure(be, ref, ids, be.scheme, "float32", source), "base_weight_bytes": be.base_weight_bytes()}


def trained(model: str, backend: str, scheme: str | None, data: Path, out: Path, steps: int, max_length: int) -> dict:
    from common.config.schema import load_config
    from jobs.trainer import train
    cfg = load_config(overrides={
        "model": {"path": model, "quantize": scheme},
        "data": {"train": str(data / "train.jsonl"), "valid": str(data / "valid.jsonl"), "max_length": max_length},
        "training": {"steps": steps, "batch_size": 1, "lr": 2e-4, "save_every": 0, "eval_every": 0, "seed": 0},
        "lora": {"rank": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}, "output": str(out)})
    s = train(cfg, backend, overwrite=True, echo=lambda *a: None)
    return {**s.get("quantization_damage", {}), **s}


def main() -> None:
    from common.models.quantize import SCHEMES
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--schemes", nargs="*", default=[None, *SCHEMES])
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="twinlora-qschemes-"))
    data = legi_data(work)
    print(f"| {a.model} | backend | mean KL vs float | same argmax | base weights MiB | tokens/s | val loss |")
    print("|---|---|---|---|---|---|---|")
    for scheme in a.schemes:
        scheme = None if scheme in (None, "float") else scheme
        backends = [SCHEMES[scheme].backend] if scheme else ["mlx", "torch"]
        for b in backends:
            r = (damage_only(a.model, b, scheme, data, a.max_length) if a.no_train else
                 trained(a.model, b, scheme, data, work / f"{b}-{scheme}", a.steps, a.max_length))
            f = lambda k, fmt: format(r[k], fmt) if r.get(k) is not None else "—"  # noqa: E731
            print(f"| {scheme or 'float32'} | {b} | {f('mean_kl', '.4f')} | "
                  f"{f('argmax_agree', '.1%')} | {r['base_weight_bytes'] / 2**20:.1f} | {f('tokens_per_s', '.0f')} | "
                  f"{f('val_loss', '.4f')} |", flush=True)


if __name__ == "__main__":
    main()
