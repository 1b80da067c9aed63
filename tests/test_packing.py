"""Padding-free packing (training.batching: packed) on both backends: a packed row must give
exactly the per-sample results, i.e. no attention across sample boundaries."""
from __future__ import annotations

import numpy as np
import pytest

from common.training.batching import collate, epoch_order, iterate_batches, pack
from common.training.tokenize import Tokenized

LENGTHS = [9, 23, 5, 16]


def _rows(vocab: int, seed: int = 0) -> list[Tokenized]:
    rng = np.random.default_rng(seed)
    rows = []
    for i, n in enumerate(LENGTHS):
        ids = rng.integers(3, vocab, n).tolist()
        p = 0 if i == 1 else n // 3            # row 1 trains every token (no prompt)
        rows.append(Tokenized(tuple(ids), tuple([0] * p + [1] * (n - p))))
    return rows


def test_pack_layout():
    rows = _rows(300)
    b = pack(rows)
    assert b.ids.shape == (1, sum(LENGTHS)) and b.position_ids.shape == b.ids.shape
    assert b.n_tokens == sum(LENGTHS)
    starts = np.cumsum([0] + LENGTHS[:-1])
    assert (np.flatnonzero(b.position_ids[0] == 0) == starts).all()
    assert (b.mask[0, starts] == 0).all()          # a sample's first token is never a target
    assert b.n_targets == sum(r.n_targets for r in rows) == int(b.mask[:, 1:].sum())
    assert collate(rows, 0).position_ids is None   # padded batches are unchanged


def test_packed_groups_match_padded():
    rows = _rows(300) * 3
    packed = iterate_batches(rows, 2, 0, seed=5, mode="packed")
    padded = iterate_batches(rows, 2, 0, seed=5, mode="padded")
    for _ in range(8):
        a, b = next(packed), next(padded)
        assert a.n_targets == b.n_targets and a.n_tokens == b.n_tokens
        assert sorted(a.ids[0].tolist()) == sorted(b.ids[b.ids != 0].tolist())
    assert epoch_order(12, 2, 5, 0, "packed") == epoch_order(12, 2, 5, 0, "padded")


def _torch_backend(model_dir, attn):
    pytest.importorskip("torch")
    return _with_lora("torch", model_dir, attn_implementation=attn)


def _with_lora(backend: str, model_dir, **kw):
    """`backend` on the tiny model with an all-linear rank-4 LoRA whose B is non-zero."""
    from backends import get_backend
    from common.adapters.format import PEFT_PREFIX, init_lora_weights, spec_from_config
    from common.config.schema import LoraConfig

    be = get_backend(backend)(model_dir, **kw)
    lora = LoraConfig(rank=4, alpha=8.0, target_modules="all-linear")
    spec, modules = spec_from_config(lora, be.linear_modules(), be.num_hidden_layers(), str(model_dir))
    weights = init_lora_weights(spec, modules, seed=0)
    rng = np.random.default_rng(1)
    for k in weights:        # non-zero B, so the adapter takes part in the check
        if k.startswith(PEFT_PREFIX) and k.endswith("lora_B.weight"):
            weights[k] = rng.normal(0, 0.05, weights[k].shape).astype(np.float32)
    be.attach_lora(spec, modules, weights)
    be.make_optimizer((0.9, 0.999), 1e-8, 0.0)
    return be


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_per_sample_losses(tiny_model, attn):
    import torch

    be = _torch_backend(tiny_model, attn)
    rows = _rows(int(be.model.config.vocab_size))
    # Token-weighted mean of the per-sample losses, each computed alone.
    sums, counts = zip(*(be.eval_loss(collate([r], 0)) for r in rows))
    expected = sum(sums) / sum(counts)
    s, n = be.eval_loss(pack(rows))
    assert n == sum(counts)
    assert s / n == pytest.approx(expected, rel=1e-5, abs=1e-6)

    # Training step: same loss and same gradients as a padded batch of the same samples.
    s_pack, _ = be.accumulate(pack(rows))
    g_pack = {k: p.grad.clone() for k, p in be._params.items()}
    be.optimizer.zero_grad(set_to_none=True)
    s_pad, _ = be.accumulate(collate(rows, 0))
    assert s_pack / n == pytest.approx(s_pad / n, rel=1e-5, abs=1e-6)
    for k, p in be._params.items():
        torch.testing.assert_close(g_pack[k], p.grad, rtol=1e-4, atol=1e-6)
    be.optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_unpacked(tiny_model, attn):
    import torch

    be = _torch_backend(tiny_model, attn)
    rows = _rows(int(be.model.config.vocab_size), seed=3)
    b = pack(rows)
    be.peft.eval()
    with torch.no_grad():
        packed = be.peft(input_ids=torch.from_numpy(b.ids).long(),
                         position_ids=torch.from_numpy(b.position_ids).long()).logits[0].numpy()
    start = 0
    for r in rows:
        alone = be.logits(np.array([r.ids]))[0]
        np.testing.assert_allclose(packed[start: start + len(r.ids)], alone, rtol=1e-5, atol=1e-5)
        start += len(r.ids)
    # Without position_ids the same row attends across samples: the check above is not vacuous.
    with torch.no_grad():
        leaky = be.peft(input_ids=torch.from_numpy(b.ids).long()).logits[0].numpy()
    assert np.abs(leaky[LENGTHS[0]:] - packed[LENGTHS[0]:]).max() > 1e-2


def _mlx_backend(model_dir, **kw):
    pytest.importorskip("mlx.core")
    return _with_lora("mlx", model_dir, **kw)


def _mlx_grads(be) -> dict:
    from mlx.utils import tree_flatten
    out = {k: np.array(v) for k, v in tree_flatten(be._grads)}
    be._grads = None
    return out


@pytest.mark.parametrize("checkpointed", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("lengths", [LENGTHS, [120, 200, 7], [300, 250, 20], [530, 40]],
                         ids=["short", "over-attention-chunk", "row-over-whole-row", "sample-over-whole-row"])
def test_mlx_packed_loss_and_gradients_equal_padded(tiny_model, lengths, checkpointed):
    """A packed MLX row: the same summed loss and LoRA gradients as the padded batch of its samples
    (and as each sample alone), with and without gradient checkpointing. The attention runs per
    sample, chosen by the longest sample: a 200-token sample takes the chunked attention without
    the CPU kernels (their whole-row attention with them, up to 512 tokens), a 530-token sample the
    chunked one either way (with checkpointing: its saved forward results, the row's block mask)."""
    be = _mlx_backend(tiny_model, grad_checkpointing=checkpointed)
    rng = np.random.default_rng(4)
    rows = [Tokenized(tuple(rng.integers(3, 300, n).tolist()), tuple([0] * (n // 3) + [1] * (n - n // 3)))
            for n in lengths]
    sums, counts = zip(*(be.eval_loss(collate([r], 0)) for r in rows))
    s, n = be.eval_loss(pack(rows))
    assert n == sum(counts)
    assert s / n == pytest.approx(sum(sums) / n, rel=1e-5, abs=1e-6)
    s_pack, _ = be.accumulate(pack(rows))
    g_pack = _mlx_grads(be)
    s_pad, _ = be.accumulate(collate(rows, 0))
    g_pad = _mlx_grads(be)
    assert s_pack / n == pytest.approx(s_pad / n, rel=1e-5, abs=1e-6)
    assert g_pack.keys() == g_pad.keys()
    for k in g_pad:    # the packed 327-token row takes the chunked attention, the padded 200 mx.fast SDPA:
        scale = np.abs(g_pad[k]).max()        # float32 rounding of other kernels, ~1e-6 of the largest entry
        np.testing.assert_allclose(g_pack[k], g_pad[k], rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_mlx_packed_attention_runs_one_sample_at_a_time(request, monkeypatch, family):
    """The attention of a packed row runs over each sample's own queries and keys (Σ nᵢ² scores, not
    (Σ nᵢ)²), with the window of Gemma's sliding layers (8 in the seed, crossed by every sample
    here): loss and gradients equal the padded batch's, every layer sees the samples' lengths."""
    from backends.mlx import packing

    be = _mlx_backend(request.getfixturevalue("tiny_model" if family == "llama" else "gemma_seed"))
    assert be.model.model_type == family
    rng = np.random.default_rng(6)
    rows = [Tokenized(tuple(rng.integers(3, 300, n).tolist()), tuple([0] * (n // 3) + [1] * (n - n // 3)))
            for n in (9, 23, 16)]
    seen, per_span = [], packing._per_span

    def spying(inner, masks, spans):        # records what the device's attention is handed
        def attend(queries, keys, values, cache=None, scale=1.0, mask=None, sinks=None):
            seen.append((queries.shape[-2], keys.shape[-2], mask if isinstance(mask, str) else tuple(mask.shape)))
            return inner(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
        return per_span(attend, masks, spans)
    monkeypatch.setattr(packing, "_per_span", spying)
    s_pack, n = be.accumulate(pack(rows))
    g_pack = _mlx_grads(be)
    s_pad, _ = be.accumulate(collate(rows, 0))
    g_pad = _mlx_grads(be)
    # the row's 48 tokens predict 47: samples of 9, 23 and 15 positions, in order, in every layer
    assert [(q, k) for q, k, _ in seen] == [(9, 9), (23, 23), (15, 15)] * be.num_hidden_layers()
    want = {"causal", (9, 9), (23, 23), (15, 15)} if family == "gemma3_text" else {"causal"}
    assert {m for _, _, m in seen} == want           # sliding layers: each sample's own windowed mask
    assert s_pack / n == pytest.approx(s_pad / n, rel=1e-5)
    for k in g_pad:
        np.testing.assert_allclose(g_pack[k], g_pad[k], rtol=1e-4, atol=1e-5 * np.abs(g_pad[k]).max())


def test_mlx_packed_row_keeps_samples_apart(tiny_model):
    """Without the per-sample rope and mask the same row gives other logits (the check is not vacuous)."""
    import mlx.core as mx

    from backends.mlx.packing import packed_rows
    be = _mlx_backend(tiny_model)
    rows = _rows(300, seed=3)
    b = pack(rows)
    be.model.eval()
    with packed_rows(be.model, b.position_ids, b.ids.shape[1]):
        packed = np.array(be.model(mx.array(b.ids)))[0]
    leaky = np.array(be.model(mx.array(b.ids)))[0]
    start = 0
    for r in rows:
        np.testing.assert_allclose(packed[start: start + len(r.ids)], be.logits(np.array([r.ids]))[0],
                                   rtol=1e-5, atol=1e-5)
        start += len(r.ids)
    assert np.abs(leaky[LENGTHS[0]:] - packed[LENGTHS[0]:]).max() > 1e-2
    assert "rope" not in be.model.model.layers[0].self_attn.__dict__      # restored on exit


def test_mlx_train_packed_follows_the_padded_run(tiny_model, tmp_path):
    """`train --backend mlx` with training.batching: packed (no longer refused): the same per-step
    losses as the padded run on the same batches."""
    pytest.importorskip("mlx.core")
    from helpers import chat_rows, tiny_config, write_jsonl

    from common.runs.run_dir import RunDir
    from jobs.trainer import train
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(12))
    losses = {}
    for mode in ("padded", "packed"):
        train(tiny_config(tiny_model, data, tmp_path / mode, training={"batching": mode}), "mlx",
              echo=lambda *a, **k: None)
        losses[mode] = [r["loss"] for r in RunDir(tmp_path / mode).read_log() if r.get("event") == "train"]
    assert len(losses["packed"]) == 4
    assert losses["packed"] == pytest.approx(losses["padded"], rel=1e-4)
