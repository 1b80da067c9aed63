"""The contract between the jobs and a backend: the methods the jobs call (`Backend`; what each
backend supports is declared in `backends/capabilities.py`). Everything else is written once: data, schedule,
checkpoints, adapter files and metrics in `common/`, the loop and the other jobs in `jobs/`.

Weights cross the boundary as numpy arrays in PEFT naming and shapes; batches cross it as the
numpy arrays built by `common.training.batching`. `tests/test_backend_contract.py` checks both
implementations against this file (method names and signatures).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from backends.capabilities import Capabilities
from common.adapters.format import AdapterSpec
from common.training.batching import Batch


class Backend(Protocol):
    """What the jobs call. A backend holds one base model with its LoRA adapters and runs the
    forward/backward and the AdamW step; the loop, the data and the files are the jobs'."""
    capabilities: Capabilities
    device: str
    sharded: bool      # True once distribute() sharded the weights (FSDP): forward and weight reads are collectives
    notes: list[str]   # printed when training starts (e.g. "4-bit on CPU is slow")
    objective_sums: dict[str, float]  # the objective's metric sums of the last accumulate/eval_loss (DPO rewards)
    active_adapter: str | None  # the adapter forward/generate use; None: the bare base

    def __init__(self, model_dir: Path, dtype: str = "float32", quantize: str | None = None,
                 grad_checkpointing: bool = False, attn_implementation: str | None = None,
                 fsdp: bool = False) -> None:
        """`fsdp`: distribute() will shard the model (torch only; the model then stays on the CPU
        until each layer is sharded onto this rank's device)."""

    # ------------------------------------------------------------ structure and adapters
    def linear_modules(self) -> dict[str, tuple[int, int]]:
        """Every linear layer of the base: HF path → (out, in)."""

    def num_hidden_layers(self) -> int: ...

    def attach_lora(self, spec: AdapterSpec, modules: dict[str, tuple[int, int]],
                    weights: dict[str, np.ndarray]) -> None:
        """Wrap `modules` with LoRA (or DoRA) layers and set their weights (PEFT-named)."""

    def add_adapter(self, name: str, spec: AdapterSpec, modules: dict[str, tuple[int, int]],
                    weights: dict[str, np.ndarray]) -> None:
        """Add another named adapter over the same loaded base (attach_lora's is "default")."""

    def set_active_adapter(self, name: str) -> None:
        """Make adapter `name` the one forward/generate/lora_weights use; the base is not reloaded."""

    def remove_adapter(self, name: str) -> None:
        """Drop adapter `name`'s layers (serve's /v1/unload_lora_adapter); the base stays loaded.
        Removing the active one leaves the bare base active (active_adapter None)."""

    def lora_weights(self) -> dict[str, np.ndarray]:
        """Current adapter weights, PEFT-named, float32."""

    # ------------------------------------------------------------ training (jobs/fit.py)
    def make_optimizer(self, betas: tuple[float, float], eps: float, weight_decay: float, kind: str = "adamw") -> None: ...

    def seed(self, seed: int) -> None:
        """Seed the framework RNG (dropout) for one micro-batch; re-seeded every time so resume is exact."""

    def distribute(self, world_size: int) -> None:
        """Several processes (jobs/distributed.py), after attach_lora: hand the model to the
        framework's data-parallel engine (torch DDP or FSDP2; nothing to wrap on MLX)."""

    def set_objective(self, objective, reference_adapter: str | None = None) -> None:
        """The loss accumulate/eval_loss compute (common.training.objectives; SFT until set) and, for an
        objective with a reference, the frozen adapter that is the reference (None: the base
        with the adapter disabled)."""

    def accumulate(self, batch: Batch, sync: bool = True) -> tuple[float, int]:
        """Forward + backward on one micro-batch; add the gradient of the objective's *summed*
        loss. `sync` is False on all but this rank's last micro-batch of the step (DDP/FSDP reduce
        the gradients in that backward only). Returns (summed loss, count: target tokens for SFT,
        pairs for DPO); the objective's metric sums are left in `objective_sums`."""

    def apply_gradients(self, lr: float, n_targets: int, max_grad_norm: float | None) -> float:
        """Divide accumulated gradients by n_targets (token-weighted mean), clip, AdamW step,
        zero them. Returns the pre-clip gradient norm."""

    def all_reduce(self, scalars: list[float]) -> list[float]:
        """Data parallel only (jobs/distributed.py): leave the accumulated gradients summed over
        all ranks, and sum `scalars` (loss sum, target tokens, tokens); returns the summed scalars."""

    def optimizer_state(self) -> tuple[dict[str, np.ndarray], int]:
        """AdamW moments as {PEFT key + '::m' / '::v': array in PEFT shape} and the step count."""

    def load_optimizer_state(self, state: dict[str, np.ndarray], step: int) -> None: ...

    def eval_loss(self, batch: Batch) -> tuple[float, int]:
        """(summed loss, count) of one batch under the objective, no gradient (sums in objective_sums)."""

    # ------------------------------------------------------------ inference and output
    def logits(self, ids: np.ndarray) -> np.ndarray:
        """float32 logits [B, T, V] for int ids [B, T]."""

    def generate(self, prompt_ids: list[int], max_new_tokens: int, eos_ids: list[int],
                 sampler=None, on_token=None) -> list[int]:
        """Continuation (new tokens only, stops at EOS): greedy, or each token chosen by
        `sampler(logits_of_last_position) -> id` (common.training.sampling, so both backends draw alike);
        `on_token(id)` is called as each token is produced (streaming)."""

    def base_only(self):
        """Context manager: the base model without adapters while it is held (generate --base)."""

    def cache_prompts(self, entries: int) -> None:
        """Keep the keys and values of the last `entries` answered prompts, per adapter and for the
        bare base, and start a prompt sharing a prefix with one of them from there (serve, as
        mlx_lm.server does; 0: off). Only while the weights stay as they are: adding or removing
        an adapter clears it, and training never turns it on."""

    def merge_and_save(self, out_dir: Path) -> None:
        """Fold the adapter into the base weights and save an HF safetensors model (weights + config)."""

    def peak_memory_bytes(self) -> int: ...

    def base_weight_bytes(self, unquantized: bool = False) -> int:
        """Bytes of the frozen base weights in memory (packed + scales when quantized); with
        `unquantized`, what they would take in model.dtype (the 16/32-bit run's weights)."""


class ProcessGroup(Protocol):
    """A backend's data-parallel processes (jobs/distributed.py, jobs/launch.py): the module-level
    functions of `backends/<name>/distributed.py` (`backends.process_group(name)`), which import
    their framework only when a process joins a group, so the jobs import neither framework."""

    def rank_envs(self, nproc: int, tmp: Path, ports: list[int]) -> list[dict[str, str]]:
        """The environment variables of each of `nproc` local ranks, as the framework's own launcher
        (torchrun, mlx.launch) sets them; `ports`: one free TCP port per rank, `tmp` a scratch folder."""

    def env_rank(self) -> str | None:
        """This process's rank as the launcher's environment gives it (None: not started as a rank)."""

    def join(self, check_world: Callable[[int], None]) -> tuple[int, int, str] | None:
        """Join the group the environment describes: (rank, world size, what carries it), None for a
        single process; `check_world(world size)` runs before the work it would waste."""

    def barrier(self) -> None:
        """Wait until every rank of the joined group reaches this point."""

    def leave(self) -> None:
        """Tear down the joined group."""


class BatchGenerator(Protocol):
    """A backend whose `capabilities.batched_generation` is True also has this (eval uses it)."""

    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int, eos_ids: list[int]) -> list[list[int]]:
        """Greedy continuations of several prompts at once (left-padded, masked)."""
