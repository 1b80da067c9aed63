"""Which device-specific choices run where: one table, so no branch hides in a backend.

Every speed choice below was measured on a Linux CPU only (docs/benchmark-cpu.md). On a device where
a choice was never measured (MLX on Metal or CUDA, torch on CUDA or MPS) the default is what the
plain library does: mlx-lm's `mx.fast.scaled_dot_product_attention`, `mx.exp`, an uncompiled step,
glibc's own heap. One exception, stated: MLX on a GPU switches to the chunked attention when the
estimated attention memory of plain SDPA would not fit (`sdpa_attention_bytes` > FIT_FRACTION of the
device's working set), as a row that does not fit cannot be compared anyway.

Framework-free: each backend asks its library what the device is (`backends/mlx/device.py`,
`backends/torch/backend.pick_device`) and this module decides; tests force any device on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.errors import BackendError

# plain SDPA's backward holds about this many L×L float32 score tensors per layer (measured on the
# CPU: 3.5 × 2.3 GiB at 8192 tokens on SmolLM2, backends/mlx/attention.py)
SDPA_SCORE_COPIES = 3.5
FIT_FRACTION = 0.5              # of the device's recommended working set, for one layer's attention
# With twinlora's CPU kernels MLX attends over whole rows up to this many attention chunks (512 tokens;
# the chunked attention above): one layer's forward+backward at 512 tokens, SmolLM2's heads, 2 threads:
# 0.034 s whole-row on the kernels' softmax against 0.047 s chunked (0.061 mx.fast), for 1.2× mx.fast's
# memory instead of 0.6×; at 1024 tokens 1.24× against 0.38× (`python -m benchmarks.mlx_attention
# --lengths 256,512,1024`, docs/benchmark-cpu.md).
KERNEL_WHOLE_ROW_CHUNKS = 2
FOUR_BIT_DEVICES = ("cuda", "cpu")          # bitsandbytes NF4 on torch (not MPS)
PAGED_OPTIMIZER_DEVICES = ("cuda",)         # bitsandbytes paged optimizers page through CUDA memory
TORCH_DEVICES = ("cuda", "mps", "cpu")


@dataclass(frozen=True)
class Choices:
    """What one training step does on one device (printed by the check scripts)."""
    device: str                  # cpu, gpu (MLX on Metal/CUDA), cuda, mps
    chunked_attention: bool      # MLX: FlashAttention-2 in MLX ops instead of mx.fast SDPA
    cpu_exponentials: bool       # MLX: polynomial/power exponentials (a CPU's exp is scalar libm)
    compiled_step: bool          # MLX: the whole gradient step compiled (fuses those exponentials)
    heap: str | None             # glibc policy (common/models/heap.py): "reuse" (MLX), "release" (torch)
    measured: bool               # these choices were timed on this kind of device
    why: str = ""
    cpu_kernels: bool = False    # MLX: twinlora's CPU kernels (backends/mlx/cpu_kernels), when built

    def exp(self, compiled: bool) -> str:
        """The chunked attention's exponential: 'poly' (fuses when compiled), 'power', or 'exp'."""
        if not self.cpu_exponentials:
            return "exp"
        return "poly" if compiled else "power"

    def describe(self) -> str:
        attn = "chunked attention" if self.chunked_attention else \
            "whole-row attention on the CPU kernels" if self.cpu_kernels else "mx.fast SDPA"
        parts = [attn, f"exp={self.exp(self.compiled_step)}", "compiled step" if self.compiled_step else "eager step",
                 f"heap={self.heap or 'glibc default'}", "measured" if self.measured else "never measured here"]
        if self.device == "cpu" and self.cpu_exponentials:        # MLX on a CPU
            parts.insert(3, "twinlora CPU kernels" if self.cpu_kernels else "MLX's own CPU ops")
        return f"{self.device}: " + ", ".join(parts) + (f" ({self.why})" if self.why else "")


def sdpa_attention_bytes(batch: int, heads: int, seq_len: int) -> int:
    """Estimated bytes of one layer's plain SDPA forward+backward: the L×L float32 scores per head."""
    return int(SDPA_SCORE_COPIES * batch * heads * seq_len * seq_len * 4)


def mlx_choices(device: str, seq_len: int, *, chunk: int, compiled_rows: int, attention_bytes: int = 0,
                memory_bytes: int | None = None, kernels_built: bool = False) -> Choices:
    """MLX on `device` ('cpu' or 'gpu') for rows of `seq_len` tokens; `kernels_built`: twinlora's CPU
    kernels (backends/mlx/cpu_kernels) are built for this MLX, used on the CPU only."""
    long = seq_len > chunk
    if device == "cpu":
        chunked = seq_len > (KERNEL_WHOLE_ROW_CHUNKS * chunk if kernels_built else chunk)
        return Choices("cpu", chunked, True, seq_len >= compiled_rows, "reuse" if seq_len >= chunk else None, True,
                       "measured on the Linux CPU, docs/benchmark-cpu.md", cpu_kernels=kernels_built)
    too_big = long and memory_bytes is not None and attention_bytes > FIT_FRACTION * memory_bytes
    why = (f"plain SDPA would need ~{attention_bytes / 2**30:.1f} GiB for one layer, over "
           f"{FIT_FRACTION:g} of {memory_bytes / 2**30:.1f} GiB" if too_big else "what plain mlx-lm does")
    return Choices(device, too_big, False, False, None, False, why)


def torch_choices(device: str, seq_len: int, *, grad_checkpointing: bool, long_rows: int) -> Choices:
    """torch on `device`: only the heap policy is ours (CPU + checkpointing + long rows)."""
    release = device == "cpu" and grad_checkpointing and seq_len >= long_rows
    return Choices(device, False, False, False, "release" if release else None, device == "cpu",
                   "measured on the Linux CPU" if device == "cpu" else "what plain transformers does")


def torch_device(forced: str | None, cuda: bool, mps: bool) -> str:
    """cuda, then mps, then cpu; TWINLORA_DEVICE (`forced`) must name one torch sees."""
    seen = {"cuda": cuda, "mps": mps, "cpu": True}
    if not forced:
        return next(d for d in TORCH_DEVICES if seen[d])
    kind = forced.split(":")[0]                 # cuda:1 names one GPU
    if kind not in seen:
        raise BackendError(f"{forced!r} is not a torch device twinlora uses", where="TWINLORA_DEVICE",
                           fix=f"set it to one of {', '.join(TORCH_DEVICES)}, or unset it (cuda, then mps, then cpu)")
    if not seen[kind]:
        raise BackendError(f"set to {forced}, but torch sees no {kind} device on this machine",
                           where="TWINLORA_DEVICE", fix="unset TWINLORA_DEVICE (cuda, then mps, then cpu), "
                           "or run where that device is")
    return forced


def check_four_bit(device: str) -> None:
    if device not in FOUR_BIT_DEVICES:
        raise BackendError(f"4-bit quantization (bitsandbytes NF4) runs on CUDA or CPU, not {device}",
                           where="model.quantize", fix="set TWINLORA_DEVICE=cpu, or use --backend mlx (mlx-lm 4-bit)")


def bnb_compute_dtype(device: str, capability_major: int | None, model_dtype: str) -> str:
    """NF4's compute dtype: bf16 on CUDA from compute capability 8 (fp16 below), the model's elsewhere."""
    if device == "cuda":
        return "bfloat16" if (capability_major or 0) >= 8 else "float16"
    return model_dtype
