"""The quantization schemes `model.quantize` names, in one table for both backends (issue 33).

QLoRA trains an adapter against the quantized base, so the scheme decides how far from the float
model the adapter starts. Each name is one backend's quantizer with its settings spelled out;
`4bit` is each backend's recommended 4-bit scheme (RECOMMENDED: NF4 + double quant on torch; on MLX
mlx-nvfp4, the MLX 4-bit scheme whose damage matches NF4's on both embedded models, measured in
docs/variants.md; it was mlx-lm's affine group 64 before, LEGACY_4BIT). A scheme the backend
cannot run is refused with the ones it can (E220).
Importing this needs neither mlx nor torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from common.errors import BackendError


@dataclass(frozen=True)
class Scheme:
    name: str
    backend: str          # the backend whose quantizer runs it
    bits: int             # bits per quantized weight (scales excluded)
    label: str            # what it is, in words (printed, recorded)
    settings: dict = field(default_factory=dict)  # mx.quantize kwargs (mlx) or BitsAndBytesConfig kwargs (torch)

    @property
    def group_size(self) -> int:
        """Input columns sharing one scale: a layer whose input size is not a multiple is kept float."""
        return self.settings.get("group_size", 64)


def _mlx(name: str, mode: str, bits: int, group: int, label: str) -> Scheme:
    return Scheme(name, "mlx", bits, label, {"mode": mode, "bits": bits, "group_size": group})


def _bnb(name: str, bits: int, label: str, **settings) -> Scheme:
    return Scheme(name, "torch", bits, label, settings)


SCHEMES = {s.name: s for s in [
    _mlx("mlx-affine-4-g32", "affine", 4, 32, "mlx affine 4-bit, group 32 (scale + bias per 32 weights)"),
    _mlx("mlx-affine-4-g64", "affine", 4, 64, "mlx affine 4-bit, group 64 (mlx-lm's default)"),
    _mlx("mlx-mxfp4", "mxfp4", 4, 32, "mlx mxfp4 (FP4 E2M1, power-of-two scale per 32 weights)"),
    _mlx("mlx-nvfp4", "nvfp4", 4, 16, "mlx nvfp4 (FP4 E2M1, FP8 scale per 16 weights)"),
    _mlx("mlx-mxfp8", "mxfp8", 8, 32, "mlx mxfp8 (FP8 E4M3, power-of-two scale per 32 weights)"),
    _mlx("mlx-affine-8-g64", "affine", 8, 64, "mlx affine 8-bit, group 64"),
    _bnb("nf4", 4, "bitsandbytes NF4", load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    _bnb("nf4-dq", 4, "bitsandbytes NF4 + double quant (as in the QLoRA paper)", load_in_4bit=True,
         bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    _bnb("fp4", 4, "bitsandbytes FP4", load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    _bnb("int8", 8, "bitsandbytes LLM.int8 (8-bit, fp16 outlier columns)", load_in_8bit=True),
]}

# `4bit` on each backend. MLX: the 4-bit scheme no more damaged than NF4 on either embedded model,
# and of those the nearest to it (docs/variants.md)
RECOMMENDED = {"mlx": "mlx-nvfp4", "torch": "nf4-dq"}
NAMES = ("4bit", *SCHEMES)
# What `4bit` meant before checkpoints and adapters recorded the resolved scheme (96fe92e and before:
# mlx-lm's affine 4-bit group 64 on MLX, bitsandbytes NF4 + double quant on torch): an old run resumes
# against the base it was trained on, whatever `4bit` means now.
LEGACY_4BIT = {"mlx": "mlx-affine-4-g64", "torch": "nf4-dq"}


def schemes_of(backend: str) -> list[str]:
    return [n for n, s in SCHEMES.items() if s.backend == backend]


def resolve(name: str, backend: str) -> Scheme:
    """The scheme `name` means on `backend` (`4bit` → the recommended one); refuses another backend's."""
    s = SCHEMES[RECOMMENDED[backend] if name == "4bit" else name]
    if s.backend != backend:
        raise BackendError(f"{name} is {s.label}: it runs on the {s.backend} backend only; "
                           f"{backend} runs {', '.join(schemes_of(backend))}", where="model.quantize",
                           fix=f"use one of those (4bit = {RECOMMENDED[backend]}), or --backend {s.backend}")
    return s


def resolved_name(name: str | None, backend: str) -> str | None:
    """The scheme `model.quantize` resolves to on `backend` (None: a float base); what runs record."""
    return resolve(name, backend).name if name else None


def recorded_scheme(record: dict, backend: str | None) -> str | None:
    """The scheme a checkpoint (trainer_state.json) or an adapter (twinlora.json) was trained on:
    its `quantize_scheme`, or for one written before that was kept, what its model.quantize meant
    then on the backend that wrote it (`backend` when the record names none)."""
    if "quantize_scheme" in record:
        return record["quantize_scheme"]
    name = ((record.get("config") or {}).get("model") or {}).get("quantize")
    wrote = record.get("backend") or backend
    return LEGACY_4BIT.get("mlx" if wrote == "mlx" else "torch") if name == "4bit" else name


def describe(name: str | None, backend: str) -> str | None:
    """'mlx-nvfp4 (mlx nvfp4 …)' for a run's record; None when the base is not quantized."""
    if not name:
        return None
    s = resolve(name, backend)
    return f"{s.name} ({s.label})"


def table_markdown() -> str:
    """The scheme table as docs/variants.md shows it (a test keeps the two equal)."""
    rows = ["| model.quantize | backend | bits | what it is |", "|---|---|---|---|",
            *[f"| `4bit` | {b} | 4 | the recommended 4-bit scheme: `{n}` |" for b, n in RECOMMENDED.items()],
            *[f"| `{s.name}` | {s.backend} | {s.bits} | {s.label} |" for s in SCHEMES.values()]]
    return "\n".join(rows)
