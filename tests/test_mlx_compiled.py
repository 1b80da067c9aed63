"""The MLX SFT step compiled once per shape bucket (backends/mlx/compiled.py): the same loss and
LoRA gradients as the eager step, and a handful of traces for many batch shapes."""
from __future__ import annotations

import numpy as np
import pytest

from common.batching import collate
from common.tokenize import Tokenized

pytest.importorskip("mlx.core")


def _rows(rng, lengths):
    return [Tokenized(tuple(rng.integers(3, 300, n).tolist()), tuple([0] * (n // 3) + [1] * (n - n // 3)))
            for n in lengths]


def _grads(be) -> dict:
    from mlx.utils import tree_flatten
    out = {k: np.array(v) for k, v in tree_flatten(be._grads)}
    be._grads = None
    return out


def test_bucketed_inputs_pad_without_new_targets():
    from backends.mlx.compiled import ROW_MULTIPLE, TARGET_MULTIPLE, bucketed
    b = collate(_rows(np.random.default_rng(0), [7, 20, 13]), 0)
    ids, mask, keep, weight = (np.array(x) for x in bucketed(b))
    assert ids.shape == (3, 1 + ROW_MULTIPLE * 2) and (ids[:, :20] == b.ids).all() and (ids[:, 20:] == 0).all()
    assert mask.sum() == b.mask.sum() and weight.sum() == b.n_targets and len(keep) == TARGET_MULTIPLE
    flat = ids[:, 1:].reshape(-1)
    assert (flat[keep[weight > 0]] == b.ids[:, 1:][b.mask[:, 1:] > 0]).all()


def test_compiled_step_equals_eager_and_traces_per_bucket(tiny_model, monkeypatch):
    from backends.mlx.backend import Backend
    from common.adapter import init_lora_weights, spec_from_config
    from common.config import LoraConfig

    be = Backend(tiny_model)
    spec, modules = spec_from_config(LoraConfig(rank=4, target_modules="all-linear"), be.linear_modules(),
                                     be.num_hidden_layers(), str(tiny_model))
    weights = init_lora_weights(spec, modules, seed=0)
    rng = np.random.default_rng(2)
    weights = {k: (rng.normal(0, 0.05, v.shape).astype(np.float32) if k.endswith("lora_B.weight") else v)
               for k, v in weights.items()}
    be.attach_lora(spec, modules, weights)
    traces = []
    loss_sum = be._loss_sum
    monkeypatch.setattr(be, "_loss_sum", lambda *a, **k: traces.append(1) or loss_sum(*a, **k))
    batches = [collate(_rows(rng, rng.integers(18, 33, 4)), 0) for _ in range(6)]   # widths 18–32: one bucket
    compiled = []
    for b in batches:
        compiled.append((be.accumulate(b)[0], _grads(be)))
    assert len(traces) == 1                      # one trace for six batches of other widths and target counts
    monkeypatch.setattr(Backend, "_cached_step_fits", lambda *a: False)
    for b, (loss, grads) in zip(batches, compiled):
        eager_loss, _ = be.accumulate(b)
        assert loss == pytest.approx(eager_loss, rel=1e-5)
        for k, g in _grads(be).items():
            np.testing.assert_allclose(grads[k], g, rtol=1e-4, atol=1e-5 * np.abs(g).max())
