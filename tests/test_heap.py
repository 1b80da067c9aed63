"""common/models/heap.py: with torch's policy freed activation-sized blocks go back to the OS, with MLX's
a freed scores-sized block is reused without page faults, and a MALLOC_* setting of the user's is
left alone."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
sys.path.insert(0, {root!r})
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
set_ = None
if sys.argv[1] == "on":
    from common.models.heap import release_freed_memory
    set_ = release_freed_memory()
import torch
a = torch.empty(8_000_000); del a        # a freed 32 MB mmapped block raises glibc's mmap threshold
keep, tmp = [], []
for i in range(40):
    tmp.append(torch.ones(2_500_000))    # 10 MB each, as a layer's activations at long lengths
    keep.append(torch.ones(1000))        # small blocks in between, as the autograd graph's
before = rss(); del tmp
print(set_, before, rss())
"""


def _run(mode: str, **env) -> tuple[str, int, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(ROOT)), mode], env=dict(clean, **env),
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_go_back_to_the_os():
    _, before_off, after_off = _run("off")
    was_set, before_on, after_on = _run("on")
    assert was_set == "True"
    assert before_on - after_on > 300            # ~400 MB of freed tensors returned
    assert after_on < after_off - 250            # glibc's default keeps them


REUSE_SCRIPT = """
import ctypes, sys
sys.path.insert(0, {root!r})
set_ = None
if sys.argv[1] == "on":
    from common.models.heap import reuse_freed_memory
    set_ = reuse_freed_memory()
import numpy as np
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6"); libc.mallinfo2.restype = Info
scores = np.ones(20_000_000, np.float32)          # 80 MB, as one chunk's attention scores at 8192 tokens
mmapped, heap = libc.mallinfo2().hblkhd, libc.mallinfo2().arena
del scores
again = np.ones(20_000_000, np.float32)           # the next chunk's
print(set_, mmapped >> 20, heap >> 20, libc.mallinfo2().arena >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_mlx_policy_serves_large_blocks_from_the_heap():
    """A fresh mmap per buffer faults its pages in on every touch; the heap's freed block is reused."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    runs = {mode: subprocess.run([sys.executable, "-c", REUSE_SCRIPT.format(root=str(ROOT)), mode], env=clean,
                                 capture_output=True, text=True, check=True).stdout.split() for mode in ("off", "on")}
    off_mmapped, on_mmapped = int(runs["off"][1]), int(runs["on"][1])
    assert off_mmapped >= 76 and on_mmapped == 0                # glibc's default mmaps the 80 MB block
    assert runs["on"][0] == "True"
    on_heap, on_heap_after = int(runs["on"][2]), int(runs["on"][3])
    assert on_heap >= 76 and on_heap_after == on_heap           # the second block reuses the first's memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_users_malloc_setting_is_kept():
    was_set, _, _ = _run("on", MALLOC_ARENA_MAX="2")
    assert was_set == "False"


@pytest.mark.parametrize("gc, rows, called", [(True, 48, False), (True, 64, True), (False, 64, False)])
def test_torch_backend_releases_only_for_long_checkpointed_rows(tiny_model, monkeypatch, gc, rows, called):
    import numpy as np

    import backends.torch.backend as tb
    from backends import get_backend
    from common.adapters.format import init_lora_weights, spec_from_config
    from common.training.batching import Batch
    from common.config.schema import LoraConfig
    calls = []
    monkeypatch.setattr(tb, "release_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(tb, "LONG_ROWS", 64)                       # tiny rows stand in for long ones
    be = get_backend("torch")(tiny_model, grad_checkpointing=gc)
    spec, mods = spec_from_config(LoraConfig(rank=2, alpha=4, target_modules=["q_proj"]), be.linear_modules(),
                                  be.num_hidden_layers(), str(tiny_model))
    be.attach_lora(spec, mods, init_lora_weights(spec, mods, 0))
    ids = np.random.default_rng(0).integers(3, 50, (1, rows)).astype(np.int32)
    mask = np.ones(ids.shape, np.float32)
    be.accumulate(Batch(ids, mask, int(mask[:, 1:].sum()), rows))
    assert bool(calls) is called
