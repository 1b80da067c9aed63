"""`train --nproc N`: start N local ranks of the training job, as torchrun / mlx.launch (ring)
would, and wait for them. `python -m jobs.launch JOB.json` is the per-rank entry it starts; each
rank finds its place from the environment (`jobs.distributed.from_env`). What each rank's
environment holds is the backend's (`rank_envs` of backends/<name>/distributed.py).

Apart from `jobs/distributed.py` so that the training job (which reads the environment) and the
launcher (which runs the training job) do not import each other.
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
from jobs.distributed import check_accumulation

ROOT = Path(__file__).resolve().parents[1]


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
    """The environment of each local rank, as the backend's own launcher (torchrun / mlx.launch
    ring) would set it (backends/<name>/distributed.py), with its share of the CPU threads."""
    from backends import process_group
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    envs = process_group(backend).rank_envs(nproc, tmp, free_ports(nproc))
    for e in envs:
        e.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", threads))
    return envs


def launch_training(cfg, nproc: int, backend: str, *, overwrite: bool, resume: bool, init_adapter: str | None,
                    dry_run: bool, echo=print) -> int:
    """`train --nproc N`: the training job in N local processes; returns the exit code."""
    from common.runs.signals import terminate_as_interrupt
    job = {"config": cfg.to_dict(), "overwrite": overwrite, "resume": resume,
           "init_adapter": init_adapter, "dry_run": dry_run}
    with terminate_as_interrupt():  # SIGTERM to the launcher stops the ranks like Ctrl-C (rank 0 saves)
        return launch(nproc, backend, job, echo=echo)


def launch(nproc: int, backend: str, job: dict, echo=print, poll_s: float = 0.2) -> int:
    """Run `job` (train's arguments, config as a dict) in `nproc` local processes; return the
    exit code (the first non-zero one; the other ranks are then stopped)."""
    from backends import canonical
    backend = canonical(backend)
    if nproc < 2:
        raise ConfigError("--nproc must be >= 2 to launch processes", where="--nproc")
    check_accumulation(nproc, _Training(job["config"]["training"]["grad_accumulation"]))
    with tempfile.TemporaryDirectory(prefix="twinlora-dist-") as tmp:
        tmp = Path(tmp)
        (tmp / "job.json").write_text(json.dumps({**job, "backend": backend}))
        base = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        echo(f"[twinlora] launching {nproc} local {backend} processes on 127.0.0.1")
        procs = [subprocess.Popen([sys.executable, "-m", "jobs.launch", str(tmp / "job.json")],
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
    from backends import process_group
    from common.config.schema import config_from_dict
    from jobs.trainer import train
    job = json.loads(Path(job_path).read_text())
    rank = process_group(job["backend"]).env_rank() or "?"
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
