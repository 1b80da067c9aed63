"""The interface every backend implements. Everything else (data, schedule, loop, checkpoints,
adapter files, metrics) lives in `common/` and is written once.

Weights cross the boundary as numpy arrays in PEFT naming and shapes; batches cross it as the
numpy arrays built by `common.batching`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from common.adapter import AdapterSpec
from common.batching import Batch


class Backend(Protocol):
    name: str
    device: str
    sharded: bool  # True once distribute() sharded the weights (FSDP): forward and weight reads are collectives

    def __init__(self, model_dir: Path, dtype: str = "float32", quantize: str | None = None,
                 grad_checkpointing: bool = False, attn_implementation: str | None = None,
                 fsdp: bool = False) -> None:
        """`fsdp`: distribute() will shard the model (torch only; the model then stays on the CPU
        until each layer is sharded onto this rank's device)."""

    def linear_modules(self) -> dict[str, tuple[int, int]]:
        """Every linear layer of the base: HF path → (out, in)."""

    def num_hidden_layers(self) -> int: ...

    def attach_lora(self, spec: AdapterSpec, modules: dict[str, tuple[int, int]],
                    weights: dict[str, np.ndarray]) -> None:
        """Wrap `modules` with LoRA (or DoRA) layers and set their weights (PEFT-named)."""

    def lora_weights(self) -> dict[str, np.ndarray]:
        """Current adapter weights, PEFT-named, float32."""

    def add_adapter(self, name: str, spec: AdapterSpec, modules: dict[str, tuple[int, int]],
                    weights: dict[str, np.ndarray]) -> None:
        """Add another named adapter over the same loaded base (attach_lora's is "default")."""

    def set_active_adapter(self, name: str) -> None:
        """Make adapter `name` the one forward/generate/lora_weights use; the base is not reloaded."""

    def make_optimizer(self, betas: tuple[float, float], eps: float, weight_decay: float, kind: str) -> None: ...

    def seed(self, seed: int) -> None:
        """Seed the framework RNG (dropout) for one step; re-seeded every step so resume is exact."""

    def distribute(self, world_size: int) -> None:
        """Several processes (common/distributed.py), after attach_lora: hand the model to the
        framework's data-parallel engine (torch DDP or FSDP2; nothing to wrap on MLX)."""

    def accumulate(self, batch: Batch, sync: bool = True) -> tuple[float, int]:
        """Forward + backward on one micro-batch; add the gradient of the *summed* token loss.
        `sync` is False on all but this rank's last micro-batch of the step (DDP/FSDP reduce the
        gradients in that backward only). Returns (summed loss, target tokens)."""

    def apply_gradients(self, lr: float, n_targets: int, max_grad_norm: float | None) -> float:
        """Divide accumulated gradients by n_targets (token-weighted mean), clip, AdamW step,
        zero them. Returns the pre-clip gradient norm."""

    def all_reduce(self, scalars: list[float]) -> list[float]:
        """Data parallel only (common/distributed.py): leave the accumulated gradients summed over
        all ranks, and sum `scalars` (loss sum, target tokens, tokens); returns the summed scalars."""

    def optimizer_state(self) -> tuple[dict[str, np.ndarray], int]:
        """AdamW moments as {PEFT key + '::m' / '::v': array in PEFT shape} and the step count."""

    def load_optimizer_state(self, state: dict[str, np.ndarray], step: int) -> None: ...

    def eval_loss(self, batch: Batch) -> tuple[float, int]: ...

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """float32 logits [B, T, V] for int ids [B, T]."""

    def generate(self, prompt_ids: list[int], max_new_tokens: int, eos_ids: list[int],
                 sampler=None, on_token=None) -> list[int]:
        """Continuation (new tokens only, stops at EOS): greedy, or each token chosen by
        `sampler(logits_of_last_position) -> id` (common.sampling, so both backends draw alike);
        `on_token(id)` is called as each token is produced (streaming)."""

    def base_only(self):
        """Context manager: the base model without adapters while it is held (generate --base)."""

    def merge_and_save(self, out_dir: Path) -> None:
        """Fold the adapter into the base weights and save an HF safetensors model (weights + config)."""

    def peak_memory_bytes(self) -> int: ...

    def base_weight_bytes(self, unquantized: bool = False) -> int:
        """Bytes of the frozen base weights in memory (packed + scales when quantized); with
        `unquantized`, what they would take in model.dtype (the 16/32-bit run's weights)."""
