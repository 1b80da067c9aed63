"""Data parallelism on the frameworks' own engines: torch DistributedDataParallel or FSDP2
(`training.parallel`; gloo on CPU, NCCL on CUDA) and mlx.core.distributed (ring over TCP; also
mpi/jaccl/nccl when mlx.launch sets them up).

The loss is the *sum* of token losses divided by the number of target tokens of the whole global
batch. Each rank runs its share of the global batch's micro-batches (micro-batch i goes to rank
i % N) and accumulates the gradient of its summed loss; the gradients are summed over the ranks
(DDP's all-reduce or FSDP's reduce-scatter in the backward of each rank's last micro-batch on
torch, one all_sum on MLX) and so are (loss sum, target tokens, tokens). Every rank then divides by
the global target count: exactly the gradient one process gets for the same global batch (up to
fp32 summation order), so the AdamW steps agree; only rank 0 writes the run directory.

A process is a rank when started by `cli.py train --nproc N` (`launch` below), by torchrun /
accelerate launch (env RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK) for the torch
backend, or by mlx.launch (env MLX_RANK + MLX_HOSTFILE, or the mpi/jaccl/nccl equivalents) for
the MLX backend. `jobs/launch.py` starts the local ranks (`train --nproc N`). Each backend sets
its process group up, waits at barriers and tears it down (backends/<name>/distributed.py, the
`ProcessGroup` protocol of backends/base.py): the jobs import neither framework.
"""
from __future__ import annotations

from dataclasses import dataclass

from backends import process_group
from common.errors import ConfigError


@dataclass
class Dist:
    """Where this process stands: rank, world size, the collective behind it and the backend whose
    process group it joined (backends/<name>/distributed.py)."""
    rank: int = 0
    world_size: int = 1
    kind: str = "single process"
    framework: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, be, loss_sum: float, n_targets: int, n_tokens: int, sums: dict | None = None):
        """Sum the accumulated gradients (in place, through the backend), the three counters and
        the objective's metric sums when given (the same keys on every rank; returned fourth)."""
        keys = sorted(sums or {})
        if self.world_size == 1:
            out, summed = (loss_sum, n_targets, n_tokens), sums
        else:
            s, n, k, *rest = be.all_reduce([loss_sum, float(n_targets), float(n_tokens), *(sums[x] for x in keys)])
            out, summed = (s, int(round(n)), int(round(k))), dict(zip(keys, rest))
        return out if sums is None else (*out, summed)

    def barrier(self) -> None:
        if self.world_size > 1:
            process_group(self.framework).barrier()

    def close(self) -> None:
        if self.framework is not None:
            process_group(self.framework).leave()


def check_accumulation(world: int, t) -> None:
    if t is not None and t.grad_accumulation % world:
        raise ConfigError(f"training.grad_accumulation={t.grad_accumulation} is not a multiple of the "
                          f"{world} processes", where="training.grad_accumulation",
                          fix=f"set it to a multiple of {world}: the global batch is batch_size × "
                          f"grad_accumulation and each process runs grad_accumulation/{world} micro-batches")


def from_env(backend: str, t=None) -> Dist:
    """This process's Dist from the launcher's environment; a single process when none is set.
    `t` (the training config) is checked: grad_accumulation must split evenly over the ranks."""
    joined = process_group(backend).join(lambda world: check_accumulation(world, t))
    if joined is None:
        return Dist()
    rank, world, kind = joined
    return Dist(rank, world, kind, backend)
