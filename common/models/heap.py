"""glibc malloc thresholds for long rows on a CPU: each backend's allocator needs the opposite policy.

- **torch, gradient checkpointing: give freed memory back** (`release_freed_memory`). glibc raises
  its mmap threshold each time a large mmapped block is freed (up to 32 MiB), after which the
  layer-sized tensors of a long sequence (8192 tokens × 1536 floats = 50 MB) come from the heap
  and, once freed, stay in the process: measured with `cli.py bench --lengths` at 8192 tokens, the
  torch run's peak RSS was 4.7 GB while what it held at once was about 2.3 GB. Fixing the
  thresholds (M_MMAP_THRESHOLD back to glibc's 128 KiB default, M_TRIM_THRESHOLD 1 MiB; the same as
  the MALLOC_TRIM_THRESHOLD_ environment variable, which also stops the raising) returns them; the
  price is page faults on fresh blocks, which only long rows amortise (one thread, checkpointing
  on: peak RSS 4696 → 2305 MiB at 8192 tokens for ~0 % step time, 3578 → 1425 MiB at 4096 for
  +20 %, 2655 → 1841 MiB at 2048 for +55 %). Hence torch's LONG_ROWS.
- **MLX: keep freed memory for reuse** (`reuse_freed_memory`). MLX's CPU allocator mallocs and
  frees every buffer; a chunk of attention scores (256 queries × 9 heads × 8192 keys = 75 MB) is
  over glibc's largest mmap threshold, so each one is a fresh mmap whose pages fault in on first
  touch (~2 ns per float): one layer's attention at 8192 tokens, forward+backward, 10.5 → 8.3 s
  with the thresholds raised (M_MMAP_THRESHOLD and M_TRIM_THRESHOLD far above any buffer). MLX
  frees a buffer as soon as its last use has run, so the heap's high-water mark is what MLX holds
  at its peak.

Both only from the first long batch on, only on Linux/glibc, and never over a MALLOC_* setting the
user made (`MALLOC_ARENA_MAX`, `MALLOC_TRIM_THRESHOLD_`, ...).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
RELEASE = {M_MMAP_THRESHOLD: 128 * 1024, M_TRIM_THRESHOLD: 1 << 20}
REUSE = {M_MMAP_THRESHOLD: 512 << 20, M_TRIM_THRESHOLD: 512 << 20, M_TOP_PAD: 64 << 20}

_set: dict | None = None


def _apply(policy: dict) -> bool:
    """Set `policy` (mallopt parameter → value); True when it is (now or already) in force."""
    global _set
    if _set is policy:
        return True
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = all(bool(libc.mallopt(param, value)) for param, value in policy.items())
    except (OSError, AttributeError):     # not glibc (musl has no mallopt)
        return False
    _set = policy if ok else None
    return ok


def release_freed_memory() -> bool:
    """torch on a CPU with checkpointing: freed blocks go back to the OS."""
    return _apply(RELEASE)


def reuse_freed_memory() -> bool:
    """MLX on a CPU: freed blocks stay in the heap for the next buffer, without page faults."""
    return _apply(REUSE)
