"""Long sequences: when the LM-head loss runs in chunks (one rule for both backends).

Both backends already send only the target positions through the vocab-sized head. At long
lengths even those logits dominate memory: 4,500 targets × 49,152 vocab is 0.9 GB of float32
logits, and the softmax and its gradient hold about as much again each (Gemma 3's 262k vocab:
5×). Above LOSS_CHUNK_ELEMENTS logits the head + cross-entropy run over chunks of target rows,
each chunk recomputed in the backward pass (mx.checkpoint / torch.utils.checkpoint), so one
chunk's logits exist at a time. The chunks and their summation order are the same on both
backends (except a compiled MLX step's smaller chunks, below: the same sum in another order); below
the threshold nothing changes (the sum is the same single reduction as before).
"""
from __future__ import annotations

LOSS_CHUNK_ELEMENTS = 1 << 26      # 64 Mi logits = 256 MiB in float32 per chunk
# A compiled MLX step (long rows on a CPU, common/models/devices.mlx_choices) fuses the
# cross-entropy's element-wise ops, whose buffers are then not reused in place: its peak at 8192
# tokens rose 4157 → 4840 MiB with 256 MiB chunks, 3810 with 64 MiB ones. Smaller chunks for all
# would cost torch without checkpointing ~25 % of its step at 2048–4096 tokens (more head
# recomputes), so only there (`cli.py bench --lengths`).
COMPILED_LOSS_CHUNK_ELEMENTS = 1 << 24
# MLX: queries per attention chunk above this length (backends/mlx/attention.py). torch needs none:
# SDPA's fused CPU/CUDA kernels never hold the L×L scores.
ATTENTION_CHUNK = 256


def loss_chunk_rows(n_targets: int, vocab: int, limit: int | None = None) -> int | None:
    """Target rows per loss chunk, or None when all the logits fit under the limit (no chunking)."""
    limit = LOSS_CHUNK_ELEMENTS if limit is None else limit
    if n_targets * vocab <= limit:
        return None
    return max(1, limit // vocab)


def attention_flops_per_token(seq_len: int, n_layers: int, n_heads: int, head_dim: int) -> float:
    """Training FLOPs per token of the attention scores and their use (QKᵀ and A·V) in a causal
    sequence of seq_len tokens: token t attends to t keys, L/2 on average, so 2·2·(L/2)·h·d forward
    per layer, ×3 with the backward = 6·L·h·d·layers. The causal half only (the full square, as in
    PaLM's convention, would credit work a causal kernel skips)."""
    return 6 * seq_len * n_layers * n_heads * head_dim
