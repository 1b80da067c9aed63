"""The MLX backend's processes: mlx.core.distributed (ring over TCP; also mpi/jaccl/nccl when
mlx.launch sets them up), from the environment mlx.launch / `train --nproc N` give each rank
(MLX_RANK + MLX_HOSTFILE, or the mpi/jaccl/nccl equivalents). The functions of the `ProcessGroup`
protocol (backends/base.py); mlx is imported only once a process joins a group."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

ENV = ("MLX_HOSTFILE", "MLX_IBV_DEVICES", "MLX_JACCL_COORDINATOR", "OMPI_COMM_WORLD_SIZE", "NCCL_HOST_IP")


def rank_envs(nproc: int, tmp: Path, ports: list[int]) -> list[dict[str, str]]:
    """The environment of each of `nproc` local ranks, as mlx.launch (ring) sets it: a hostfile in
    `tmp` with one 127.0.0.1:port per rank (`ports`: one free TCP port per rank)."""
    hostfile = tmp / "mlx_ring_hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in ports[:nproc]]))
    return [{"MLX_HOSTFILE": str(hostfile), "MLX_RANK": str(r)} for r in range(nproc)]


def env_rank() -> str | None:
    """This process's rank as its launcher's environment says (None: not launched as a rank)."""
    return os.environ.get("MLX_RANK")


def join(check_world: Callable[[int], None]) -> tuple[int, int, str] | None:
    """Join the group the environment describes: (rank, world size, what carries it), or None for a
    single process. `check_world(world)` runs once the group's size is known."""
    present = [v for v in ENV if os.environ.get(v)]
    if present == ["MLX_HOSTFILE"] and not Path(os.environ["MLX_HOSTFILE"]).read_text().strip():
        present = []  # `mlx.launch` with one host writes an empty hostfile: a single process
    if not present:
        return None
    import mlx.core as mx
    group = mx.distributed.init(strict=True)
    if group.size() <= 1:
        return None
    check_world(group.size())
    return group.rank(), group.size(), "mlx.core.distributed"


def barrier() -> None:
    import mlx.core as mx
    mx.eval(mx.distributed.all_sum(mx.array(0.0), stream=mx.cpu))


def leave() -> None:
    """Nothing to tear down: mlx's group ends with the process."""
