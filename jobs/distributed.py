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
the MLX backend. `jobs/launch.py` starts the local ranks (`train --nproc N`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError

MLX_ENV = ("MLX_HOSTFILE", "MLX_IBV_DEVICES", "MLX_JACCL_COORDINATOR", "OMPI_COMM_WORLD_SIZE", "NCCL_HOST_IP")


@dataclass
class Dist:
    """Where this process stands: rank, world size and the collective behind it."""
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
        if self.world_size == 1:
            return
        if self.framework == "torch":
            import torch.distributed as td
            td.barrier()
        else:
            import mlx.core as mx
            mx.eval(mx.distributed.all_sum(mx.array(0.0), stream=mx.cpu))

    def close(self) -> None:
        if self.framework == "torch":
            import torch.distributed as td
            if td.is_initialized():
                td.destroy_process_group()


def check_accumulation(world: int, t) -> None:
    if t is not None and t.grad_accumulation % world:
        raise ConfigError(f"training.grad_accumulation={t.grad_accumulation} is not a multiple of the "
                          f"{world} processes", where="training.grad_accumulation",
                          fix=f"set it to a multiple of {world}: the global batch is batch_size × "
                          f"grad_accumulation and each process runs grad_accumulation/{world} micro-batches")


def from_env(backend: str, t=None) -> Dist:
    """This process's Dist from the launcher's environment; a single process when none is set.
    `t` (the training config) is checked: grad_accumulation must split evenly over the ranks."""
    if backend == "torch":
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return Dist()
        check_accumulation(world, t)
        import torch
        import torch.distributed as td

        from backends.torch.backend import pick_device
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
        device = pick_device()
        if device == "cuda":
            torch.cuda.set_device(local)  # "cuda" below means this rank's GPU
            pg = "nccl"
        elif device == "cpu":
            pg = "gloo"
        else:
            raise ConfigError(f"several torch processes on {device} are not supported (gloo reduces CPU tensors only)",
                              where="--nproc", fix="on a Mac use --backend mlx for several processes, or train in one")
        if not td.is_initialized():
            td.init_process_group(backend=pg, init_method="env://", rank=rank, world_size=world)
        return Dist(rank, world, f"torch.distributed {pg}", "torch")
    present = [v for v in MLX_ENV if os.environ.get(v)]
    if present == ["MLX_HOSTFILE"] and not Path(os.environ["MLX_HOSTFILE"]).read_text().strip():
        present = []  # `mlx.launch` with one host writes an empty hostfile: a single process
    if not present:
        return Dist()
    import mlx.core as mx
    group = mx.distributed.init(strict=True)
    if group.size() <= 1:
        return Dist()
    check_accumulation(group.size(), t)
    return Dist(group.rank(), group.size(), "mlx.core.distributed", "mlx")
