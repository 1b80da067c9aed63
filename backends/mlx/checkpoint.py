"""Per-layer gradient checkpointing scoped to one model (mlx-lm's mechanism, not its global patch).

mlx-lm's `tuner.trainer.grad_checkpoint(layer)` replaces `__call__` on the layer's *class*: every
model of that class in the process is checkpointed from then on (a later backend built without
checkpointing, the other models of a parity or sweep run), and a second call wraps it twice. Here
each layer instance is moved to a subclass made once per class, and mlx-lm's `grad_checkpoint` is
applied to that subclass: the same math (`mx.checkpoint` over the layer's trainable parameters),
for this model's layers only, and idempotent.
"""
from __future__ import annotations

_SUBCLASSES: dict[type, type] = {}


def checkpoint_layers(layers) -> int:
    """Recompute each of `layers` in the backward pass; returns how many were switched."""
    from mlx_lm.tuner.trainer import grad_checkpoint

    n = 0
    for layer in layers:
        cls = type(layer)
        if getattr(cls, "_twinlora_checkpointed", False):
            continue
        sub = _SUBCLASSES.get(cls)
        if sub is None:
            sub = type(cls.__name__, (cls,), {"_twinlora_checkpointed": True, "__module__": cls.__module__})
            layer.__class__ = sub
            grad_checkpoint(layer)          # replaces `sub.__call__` (type(layer) is sub now), not cls's
            _SUBCLASSES[cls] = sub
        layer.__class__ = sub
        n += 1
    return n


def is_checkpointed(layer) -> bool:
    return bool(getattr(type(layer), "_twinlora_checkpointed", False))
