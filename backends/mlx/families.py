"""mlx-lm models made to compute what transformers computes from the same config.json.

- config: transformers' parsed config (`common.models.families.mlx_keys`) is passed to mlx-lm's loader as
  overrides, so nested `rope_parameters`, `layer_types` and transformers' defaults reach mlx-lm;
  settings mlx-lm would ignore are refused before loading.
- Gemma 3's embedding scale (`mlx_scale_bfloat16` in the family's record): mlx-lm multiplies the embeddings by sqrt(hidden_size) rounded to
  bfloat16 (25.25 for hidden 640); transformers (what PEFT users run) by the float32 value cast to
  the model's dtype (25.298). `Gemma3Body` is mlx-lm's `Gemma3Model` with transformers' value; the
  loaded model's bodies are switched to it (a subclass; the installed mlx-lm is not modified).
"""
from __future__ import annotations

from pathlib import Path

import mlx.core as mx
from mlx_lm.models import gemma3_text
from mlx_lm.models.base import create_attention_mask

from common.errors import ModelError
from common.models.families import family, family_report


def config_overrides(model_dir: Path) -> dict:
    """The keys mlx-lm must read for `model_dir` to be transformers' model (refused if it cannot)."""
    report = family_report(model_dir)
    _check_mlx_has(model_dir)
    if report["problems"]:
        raise ModelError(f"mlx-lm would build a different {report['model_type']} model than transformers from this "
                         "config.json: " + "; ".join(report["problems"]), where=str(Path(model_dir) / "config.json"),
                         fix="use --backend torch for this model (the MLX backend trains only what both "
                             "libraries compute identically)")
    keys = report["mlx_keys"]
    raw = (Path(model_dir) / "config.json").read_text()
    if '"text_config"' in raw:
        import json
        return {"text_config": {**(json.loads(raw).get("text_config") or {}), **keys}}
    return keys


def _check_mlx_has(model_dir: Path) -> None:
    """mlx-lm's loader raises a bare ValueError for an architecture it lacks: say it in one line."""
    import importlib.util
    import json

    from mlx_lm.utils import MODEL_REMAPPING
    kind = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")
    if importlib.util.find_spec(f"mlx_lm.models.{MODEL_REMAPPING.get(kind, kind)}") is None:
        raise ModelError(f"mlx-lm has no {kind!r} architecture", where=str(Path(model_dir) / "config.json"),
                         fix="use --backend torch for this model")


class Gemma3Body(gemma3_text.Gemma3Model):
    """mlx-lm's Gemma 3 decoder stack, embeddings scaled by transformers' sqrt(hidden_size)."""

    def __call__(self, inputs: mx.array, cache=None, input_embeddings: mx.array | None = None):
        h = input_embeddings if input_embeddings is not None else self.embed_tokens(inputs)
        # transformers: embed * tensor(hidden_size ** 0.5) in float32, cast to the weights' dtype
        h = h * mx.array(self.args.hidden_size ** 0.5, mx.float32).astype(h.dtype)
        if cache is None:
            cache = [None] * len(self.layers)
        global_mask = create_attention_mask(h, cache[self.sliding_window_pattern - 1])
        sliding_mask = (create_attention_mask(h, cache[0], window_size=self.window_size)
                        if self.sliding_window_pattern > 1 else None)
        for i, (layer, c) in enumerate(zip(self.layers, cache)):
            is_global = i % self.sliding_window_pattern == self.sliding_window_pattern - 1
            h = layer(h, global_mask if is_global else sliding_mask, c)
        return self.norm(h)


def align(model) -> None:
    """Switch every mlx-lm Gemma 3 body in `model` to `Gemma3Body` (same parameters, same layers),
    for the families whose record says mlx-lm rounds the embedding scale."""
    if not family(getattr(model, "model_type", None)).mlx_scale_bfloat16:
        return
    for _, module in model.named_modules():
        if type(module) is gemma3_text.Gemma3Model:
            module.__class__ = Gemma3Body
