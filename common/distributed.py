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
the MLX backend. `python -m common.distributed JOB.json` is the per-rank entry `launch` starts.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[1]
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

    def all_reduce(self, be, loss_sum: float, n_targets: int, n_tokens: int) -> tuple[float, int, int]:
        """Sum the accumulated gradients (in place, through the backend) and the three counters."""
        if self.world_size == 1:
            return loss_sum, n_targets, n_tokens
        s, n, k = be.all_reduce([loss_sum, float(n_targets), float(n_tokens)])
        return s, int(round(n)), int(round(k))

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


def _check_accumulation(world: int, t) -> None:
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
        _check_accumulation(world, t)
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
    _check_accumulation(group.size(), t)
    return Dist(group.rank(), group.size(), "mlx.core.distributed", "mlx")


# ------------------------------------------------------------------ launcher

def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (asked from the OS, then released)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def rank_envs(nproc: int, backend: str, tmp: Path) -> list[dict]:
    """The environment of each local rank, as torchrun / mlx.launch (ring) would set it."""
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    envs = []
    if backend == "torch":
        port = free_ports(1)[0]
        for r in range(nproc):
            envs.append({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc),
                         "RANK": str(r), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(nproc)})
    else:
        hostfile = tmp / "mlx_ring_hosts.json"  # the ring backend's hostfile: one [ip:port] per rank
        hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in free_ports(nproc)]))
        for r in range(nproc):
            envs.append({"MLX_HOSTFILE": str(hostfile), "MLX_RANK": str(r)})
    for e in envs:
        e.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", threads))
    return envs


def launch(nproc: int, backend: str, job: dict, echo=print, poll_s: float = 0.2) -> int:
    """Run `job` (train's arguments, config as a dict) in `nproc` local processes; return the
    exit code (the first non-zero one; the other ranks are then stopped)."""
    from backends import canonical
    backend = canonical(backend)
    if nproc < 2:
        raise ConfigError("--nproc must be >= 2 to launch processes", where="--nproc")
    _check_accumulation(nproc, _Training(job["config"]["training"]["grad_accumulation"]))
    with tempfile.TemporaryDirectory(prefix="twinlora-dist-") as tmp:
        tmp = Path(tmp)
        (tmp / "job.json").write_text(json.dumps({**job, "backend": backend}))
        base = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        echo(f"[twinlora] launching {nproc} local {backend} processes on 127.0.0.1")
        procs = [subprocess.Popen([sys.executable, "-m", "common.distributed", str(tmp / "job.json")],
                                  env={**base, **e}) for e in rank_envs(nproc, backend, tmp)]
        try:
            while True:
                codes = [p.poll() for p in procs]
                failed = [c for c in codes if c not in (None, 0)]  # by rank: rank 0's error first
                if failed or all(c == 0 for c in codes):
                    break
                time.sleep(poll_s)
        except KeyboardInterrupt:
            failed = [130]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        return failed[0] if failed else 0


@dataclass
class _Training:
    grad_accumulation: int


def worker(job_path: str) -> int:
    """One rank: rebuild the config, train, print a user error as one line."""
    from common.config import config_from_dict
    from common.trainer import train
    job = json.loads(Path(job_path).read_text())
    rank = os.environ.get("RANK") or os.environ.get("MLX_RANK") or "?"
    try:
        train(config_from_dict(job["config"]), job["backend"], overwrite=job.get("overwrite", False),
              resume=job.get("resume", False), init_adapter=job.get("init_adapter"),
              dry_run=job.get("dry_run", False), echo=lambda msg="", **_: print(msg, flush=True))
    except UserError as exc:
        print(f"error (rank {rank}): {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except Exception as exc:
        if rank in ("0", "?") or os.environ.get("TWINLORA_DEBUG"):
            raise
        # Mostly "connection closed by peer" after another rank stopped; rank 0 shows tracebacks.
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"error (rank {rank}): {type(exc).__name__}: {first} (TWINLORA_DEBUG=1 shows the traceback)",
              file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(worker(sys.argv[1]))
