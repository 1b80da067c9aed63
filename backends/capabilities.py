"""What each backend supports, in one table the jobs ask (rather than testing a backend's name);
the refusals of what a backend lacks are written here once. Importing this needs neither mlx
nor torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from common.errors import BackendError
from common.models.quantize import schemes_of


@dataclass(frozen=True)
class Capabilities:
    name: str
    packages: tuple[str, ...]          # distributions whose versions an adapter records
    packed_batching: bool = False      # training.batching: packed (samples kept apart by position ids)
    fsdp: bool = False                 # training.parallel: fsdp (weights sharded over the processes)
    quantizers: tuple[str, ...] = ()   # model.quantize schemes it runs (common/models/quantize.py), besides 4bit
    optimizers: tuple[str, ...] = ("adamw",)        # training.optimizer kinds
    batched_generation: bool = False   # has generate_batch (backends.base.BatchGenerator)
    mlx_adapter: bool = False          # a run also writes mlx-lm's own adapter files (adapter/mlx/)

    def check_training(self, training) -> None:
        """Refuse, before any work, a `training` config section this backend cannot run."""
        if training.batching == "packed":
            self.refuse("packed_batching")
        if training.parallel == "fsdp":
            self.refuse("fsdp")

    def check_quantize(self, name: str | None):
        """The scheme `model.quantize` means here (None: a float base); another backend's is refused (E220)."""
        from common.models.quantize import resolve
        return resolve(name, self.name) if name else None

    def refuse(self, feature: str) -> None:
        """Raise the one error for `feature` when this backend lacks it (the backends call it too,
        for callers that skip check_training)."""
        if getattr(self, feature):
            return
        where, what, fix = _REFUSALS[feature]
        having = " and ".join(c.name for c in DECLARED.values() if getattr(c, feature))
        raise BackendError(f"{what} is implemented on the {having} backend only", where=where, fix=fix.format(name=self.name))


_REFUSALS = {  # feature → (config key, what is asked, how to do without it)
    "packed_batching": ("training.batching", "training.batching: packed", "use batching: bucketed with --backend {name}"),
    "fsdp": ("training.parallel", "fsdp (sharded training)",
             "use training.parallel: ddp with --backend {name} (every process holds the model)"),
}

DECLARED = {
    "mlx": Capabilities(
        "mlx", packages=("mlx", "mlx-lm"),
        quantizers=tuple(schemes_of("mlx")),
        packed_batching=True,      # per-sample rope and block mask (backends/mlx/packing.py)
        batched_generation=True,   # mlx-lm's BatchGenerator
        mlx_adapter=True),
    "torch": Capabilities(
        "torch", packages=("torch", "transformers", "peft"),
        packed_batching=True,
        fsdp=True,
        quantizers=tuple(schemes_of("torch")),
        optimizers=("adamw", "paged_adamw_8bit"),
        batched_generation=True),
}


# the two backends every parity check compares (parity, demo, study, QLoRA parity), in the declared order
PARITY_PAIR = tuple(DECLARED)


def capabilities(backend: str) -> Capabilities:
    """The capabilities of a backend by any of its names (mlx, torch, cuda)."""
    from backends import canonical
    return DECLARED[canonical(backend)]
