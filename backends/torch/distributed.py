"""The torch backend's processes: torch.distributed over gloo (CPU) or NCCL (one GPU per rank),
set up from the environment torchrun / accelerate launch / `train --nproc N` give each rank
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK). The functions of the `ProcessGroup`
protocol (backends/base.py); torch is imported only once a process joins a group."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from common.errors import ConfigError


def rank_envs(nproc: int, tmp: Path, ports: list[int]) -> list[dict[str, str]]:
    """The environment of each of `nproc` local ranks, as torchrun sets it: rank 0 listens on the
    first of `ports` (free TCP ports on 127.0.0.1); `tmp` is not needed."""
    return [{"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(ports[0]), "WORLD_SIZE": str(nproc),
             "RANK": str(r), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(nproc)} for r in range(nproc)]


def env_rank() -> str | None:
    """This process's rank as its launcher's environment says (None: not launched as a rank)."""
    return os.environ.get("RANK")


def join(check_world: Callable[[int], None]) -> tuple[int, int, str] | None:
    """Join the process group the environment describes: (rank, world size, what carries it), or
    None for a single process. `check_world(world)` runs before any connection is made."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    check_world(world)
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
    return rank, world, f"torch.distributed {pg}"


def barrier() -> None:
    import torch.distributed as td
    td.barrier()


def leave() -> None:
    """Tear the process group down (nothing to do when none was set up)."""
    import torch.distributed as td
    if td.is_initialized():
        td.destroy_process_group()
