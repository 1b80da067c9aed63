"""Give freed heap memory back to the OS on a CPU, so that gradient checkpointing's savings show.

glibc's malloc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB),
after which the layer-sized tensors of a long sequence (8192 tokens × 1536 floats = 50 MB) come from
the heap and, once freed, stay in the process: measured with `cli.py bench --lengths` at 8192 tokens,
the torch run's peak RSS was 4.7 GB while what it held at once was about 2.3 GB. Fixing the
thresholds (M_MMAP_THRESHOLD back to glibc's 128 KiB default, M_TRIM_THRESHOLD 1 MiB; the same as
the MALLOC_TRIM_THRESHOLD_ environment variable, which also stops the raising) returns them; the
price is page faults on fresh blocks, which only long rows amortise (`cli.py bench --lengths`, one
thread, checkpointing on: peak RSS 4696 → 2305 MiB at 8192 tokens for ~0 % step time, 3578 → 1425
MiB at 4096 for +20 %, 2655 → 1841 MiB at 2048 for +55 %).

So only for rows of LONG_ROWS tokens and more, where checkpointing was asked for (the run chose
memory over speed), from the first such batch on, only on Linux/glibc, and never over a MALLOC_*
setting the user made.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 128 * 1024
TRIM_THRESHOLD = 1 << 20
LONG_ROWS = 4096       # tokens per row from which the torch backend (CPU, checkpointing) calls it

_done: bool | None = None


def release_freed_memory() -> bool:
    """Set glibc's thresholds once per process; True when they are (now or already) set by us."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):     # not glibc (musl has no mallopt)
        _done = False
    return _done
