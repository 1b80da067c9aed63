"""A DoRA layer for MLX that computes exactly what PEFT's DoRA computes.

mlx-lm's `DoRALinear` and PEFT's `DoraLinearLayer` agree on the parts that matter most:
- the magnitude `m` (PEFT `lora_magnitude_vector`, shape (out,)) is initialised to the row norms
  ‖W‖ of the (de-quantized) base weight, in float32;
- the column norm ‖W + s·BA‖ is detached from the graph (DoRA paper §4.3) in both;
- without dropout both give  g·(W x + s·B A x) + bias,  g = m / ‖W + s·BA‖.

They differ when LoRA dropout is active in training. mlx-lm applies dropout to the LoRA path only
and rescales the whole output: g·(W x + s·B A drop(x)). PEFT (peft/tuners/lora/variants.py,
`DoraLinearVariant.forward`, and dora.py) computes
    base(x) + (g − 1)·W drop(x) + g·s·B A drop(x),
i.e. the magnitude correction is applied to W·drop(x), not to W·x. The two have different
gradients for `m` and B/A, so trained adapters would drift apart. This class follows PEFT's
formula, and PEFT's order of operations and dtypes (the norm is taken in the input's dtype), so
an adapter trained here is the one PEFT would have trained, and MLX and PyTorch logits agree to
float32 rounding. Everything else (init, `fuse`, quantized bases) is mlx-lm's.
"""
from __future__ import annotations

import mlx.core as mx
from mlx_lm.tuner.dora import DoRALinear


class PeftDoRALinear(DoRALinear):
    @staticmethod
    def from_base(linear, r: int = 8, dropout: float = 0.0, scale: float = 20.0):
        output_dims, input_dims = linear.weight.shape
        if hasattr(linear, "bits"):  # QuantizedLinear: packed uint32 columns
            input_dims = input_dims * 32 // linear.bits
        layer = PeftDoRALinear(input_dims=input_dims, output_dims=output_dims, r=r, dropout=dropout, scale=scale)
        layer.set_linear(linear)
        return layer

    def __call__(self, x):
        w = self._dequantized_weight().astype(x.dtype)
        y = x @ w.T                                    # base result without bias
        if self.training and getattr(self.dropout, "_p_1", 0.0) < 1.0:  # dropout active (p > 0)
            xd = self.dropout(x)
            base_d = xd @ w.T
        else:
            xd, base_d = x, y
        lora = (xd @ self.lora_a) @ self.lora_b
        # PEFT: ‖W + s·(BA).detach()‖ per output row, in the input dtype, then detached.
        delta = (self.lora_b.T @ self.lora_a.T).astype(x.dtype)
        norm = mx.stop_gradient(mx.linalg.norm(w + self.scale * delta, axis=1))
        g = self.m / norm
        out = y
        if "bias" in self.linear:
            out = out + self.linear.bias
        out = out + ((g - 1) * base_d + g * lora * self.scale)
        return out.astype(x.dtype)
