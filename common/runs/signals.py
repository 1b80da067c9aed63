"""SIGTERM (what SLURM, Kubernetes, `docker stop` and `timeout` send) handled like Ctrl-C: the
training loop saves its progress and says how to resume, instead of dying silently."""
from __future__ import annotations

import contextlib
import signal
import threading

received: list[int] = []  # signals turned into KeyboardInterrupt during the current block


@contextlib.contextmanager
def terminate_as_interrupt():
    """Inside the block, SIGTERM raises KeyboardInterrupt (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    received.clear()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_name() -> str:
    """"interrupted" or "interrupted by SIGTERM", for the message the loop prints."""
    return "interrupted by SIGTERM" if received else "interrupted"
