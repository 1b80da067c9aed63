"""MLX backend: the model from mlx-lm, the LoRA/DoRA layers from mlx-lm's tuner, a plain loop.

Differences from `mlx_lm lora` that the shared layer pins (see PARITY-NOTES): bias-corrected
AdamW, token-weighted loss with padding excluded, the shared schedule and clipping, and exact
resume (optimizer moments and step are saved).
"""
from __future__ import annotations

import contextlib
from functools import partial

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from backends.mlx import cpu_kernels, device
from backends.mlx.attention import long_attention
from backends.capabilities import DECLARED
from backends.mlx.families import align, config_overrides
from backends.mlx.packing import attention_length, packed_rows
from common.adapters.format import AdapterSpec, block_relative, mlx_key_to_peft, mlx_keys, peft_to_mlx
from common.training.batching import Batch
from common.models.heap import reuse_freed_memory
from common.training.longseq import COMPILED_LOSS_CHUNK_ELEMENTS
from common.errors import BackendError
from common.models.families import family
from common.training.objectives import SFT

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def _disk_dtype(model_dir: Path):
    """The mx dtype of the first floating tensor in the model's safetensors files (None if unknown)."""
    names = {"F32": mx.float32, "BF16": mx.bfloat16, "F16": mx.float16}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__" and v.get("dtype") in names:
                return names[v["dtype"]]
    return None


def _head_loss(model, h: mx.array, y: mx.array, chunk_limit: int | None = None) -> mx.array:
    """Summed cross-entropy of the head's logits for hidden rows `h` against targets `y`; above
    common.training.longseq's threshold over chunks of rows, each recomputed in the backward pass."""
    tied = "lm_head" not in model
    mod = model.model.embed_tokens if tied else model.lm_head

    def piece(y):                  # the targets are closed over: no gradient w.r.t. indices
        def f(params, h):
            mod.update(params)     # trainable head weights (if any) as inputs, as mlx-lm's grad_checkpoint
            logits = (mod.as_linear(h) if tied else mod(h)).astype(mx.float32)
            return cpu_kernels.cross_entropy(logits, y, reduction="sum")
        return f

    from common.training.longseq import loss_chunk_rows
    rows = loss_chunk_rows(h.shape[0], mod.weight.shape[0] if "weight" in mod else model.args.vocab_size, chunk_limit)
    if rows is None:
        return piece(y)(mod.trainable_parameters(), h)
    total = None
    for i in range(0, h.shape[0], rows):
        part = mx.checkpoint(piece(y[i: i + rows]))(mod.trainable_parameters(), h[i: i + rows])
        total = part if total is None else total + part
    return total


def _targets(batch: Batch) -> mx.array:
    """Flat indices into ids[:, 1:] of the loss targets."""
    return mx.array(np.flatnonzero(batch.mask[:, 1:].reshape(-1) > 0).astype(np.int32))


def _dequantize_linears(model) -> None:
    """Every QuantizedLinear (inside LoRA layers too) → a float32 Linear holding dequant(Q(W)). mx.dequantize
    returns bfloat16 for the fp modes (mxfp4/nvfp4/mxfp8): exact for their values, not for W + ΔW."""
    swaps = []
    for name, m in model.named_modules():
        if isinstance(m, nn.QuantizedLinear):
            w = mx.dequantize(m.weight, m.scales, m.get("biases"), m.group_size, m.bits, mode=m.mode).astype(mx.float32)
            lin = nn.Linear(w.shape[1], w.shape[0], bias="bias" in m)
            lin.weight = w
            if "bias" in m:
                lin.bias = m.bias
            swaps.append((name, lin))
    if swaps:
        model.update_modules(tree_unflatten(swaps))


class Backend:
    name = "mlx"
    capabilities = DECLARED["mlx"]

    def __init__(self, model_dir: Path, dtype: str = "float32", quantize: str | None = None,
                 grad_checkpointing: bool = False, attn_implementation: str | None = None, fsdp: bool = False):
        from mlx_lm.utils import load_model

        if fsdp:
            self.capabilities.refuse("fsdp")
        self.sharded = False  # MLX data parallel replicates the model (see distribute)
        self.notes: list[str] = []
        self.device = str(mx.default_device())
        if device.device_kind() == "cpu" and not cpu_kernels.available() and not cpu_kernels.turned_off():
            self.notes.append(f"twinlora's CPU kernels for MLX are {cpu_kernels.why_not()}; MLX uses its own "
                              "ops, ~1.6x slower on this CPU (docs/benchmark-cpu.md)")
        self.model_dir = Path(model_dir)
        mx.reset_peak_memory()  # peak_memory_bytes() reports this model's run, not earlier ones
        self.model, self.config = load_model(self.model_dir, model_config=config_overrides(self.model_dir))
        align(self.model)  # transformers' Gemma 3 embedding scale (backends/mlx/families.py)
        if DTYPES[dtype] != mx.float32 or any(v.dtype != mx.float32 for _, v in tree_flatten(self.model.parameters())):
            self.model.set_dtype(DTYPES[dtype])
        self.quantize = quantize
        # the base in `dtype` (what an unquantized run holds), before 4-bit packing; shapes only
        self._full_bytes = sum(v.size * DTYPES[dtype].size for _, v in tree_flatten(self.model.parameters()))
        self.scheme = self.capabilities.check_quantize(quantize)  # common/models/quantize.py
        if self.scheme:
            # the base's Linears are quantized (not the embedding), LoRA stays float; a layer whose input
            # size is not a multiple of the scheme's group stays float
            g = self.scheme.group_size
            nn.quantize(self.model, **self.scheme.settings,
                        class_predicate=lambda p, m: isinstance(m, nn.Linear) and m.weight.shape[-1] % g == 0)
        self.model.freeze()
        if grad_checkpointing:
            from backends.mlx.checkpoint import checkpoint_layers
            checkpoint_layers(self.model.layers)   # this model only (mlx-lm's patches the class)
        self._checkpointed = grad_checkpointing
        self.objective, self.reference_adapter, self.objective_sums = SFT(), None, {}
        self.optimizer = None
        self._grads = None
        self.spec = None
        self._adapters: dict = {}       # name -> (spec, {path: LoRA/DoRA layer}, mlx keys)
        self._base_layers: dict = {}    # path -> the base (possibly quantized) Linear
        self.active_adapter = None
        self._active_layers: dict = {}  # path -> layer of the active adapter (in the model now)
        self._prefixes = None           # serve: KV caches of answered prompts (cache_prompts)
        self._base_only = False         # inside base_only(): the adapter's layers are swapped out
        mx.eval(self.model.parameters())
        self._base_bytes = sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))

    def base_weight_bytes(self, unquantized: bool = False) -> int:
        """Bytes of the frozen base weights as held in memory (packed weights + scales when quantized),
        or with `unquantized` what they take in model.dtype without quantization."""
        return int(self._full_bytes if unquantized else self._base_bytes)

    # ------------------------------------------------------------ structure
    def linear_modules(self) -> dict[str, tuple[int, int]]:
        out = {}
        for name, m in self.model.named_modules():
            if name.endswith(".linear") and name[: -len(".linear")] in self._base_layers:
                name = name[: -len(".linear")]  # the base inside a LoRA/DoRA layer
            if isinstance(m, nn.QuantizedLinear):
                o, i = m.weight.shape
                out[name] = (o, i * 32 // m.bits)
            elif isinstance(m, nn.Linear):
                out[name] = tuple(m.weight.shape)
        return out

    def num_hidden_layers(self) -> int:
        return len(self.model.layers)

    def attach_lora(self, spec: AdapterSpec, modules: dict[str, tuple[int, int]], weights: dict[str, np.ndarray]) -> None:
        """Wrap `modules` with LoRA/DoRA layers (adapter "default") and make it the active one."""
        self.add_adapter("default", spec, modules, weights)
        self.set_active_adapter("default")

    def add_adapter(self, name: str, spec: AdapterSpec, modules: dict[str, tuple[int, int]],
                    weights: dict[str, np.ndarray]) -> None:
        """Build a named set of LoRA/DoRA layers over the same base Linears (nothing is reloaded or
        copied: every adapter's layers point at the one base weight). Not active until
        `set_active_adapter(name)`."""
        from mlx_lm.tuner.dora import DoRALinear
        from mlx_lm.tuner.lora import LoRALinear

        from backends.mlx.dora import PeftDoRALinear

        named = dict(self.model.named_modules())
        for p in modules:
            if p not in self._base_layers:
                m = named[p]
                self._base_layers[p] = m.linear if isinstance(m, (LoRALinear, DoRALinear)) else m
        layer_cls = PeftDoRALinear if spec.use_dora else LoRALinear
        layers = {p: layer_cls.from_base(self._base_layers[p], r=spec.rank, dropout=spec.dropout, scale=spec.scale)
                  for p in sorted(modules)}
        if weights:
            self._load_into(layers, weights, init=True)
        mx.eval([(x.lora_a, x.lora_b) for x in layers.values()])
        self._adapters[name] = (spec, layers, mlx_keys(spec, [block_relative(p) for p in modules]))
        if self._prefixes is not None:
            self._prefixes.clear()
        if name == self.active_adapter:
            self.set_active_adapter(name)  # replaced the active adapter: put the new layers in place

    def set_active_adapter(self, name: str) -> None:
        """Swap the model's LoRA layers for adapter `name`'s (the base stays in place)."""
        if name not in self._adapters:
            raise BackendError(f"no adapter named {name!r} (loaded: {', '.join(self._adapters) or 'none'})")
        spec, layers, keys = self._adapters[name]
        restore = [(p, self._base_layers[p]) for p in self._active_layers if p not in layers]
        self.model.update_modules(tree_unflatten(restore + sorted(layers.items())))
        self.model.freeze()
        self.model.unfreeze(keys=["lora_a", "lora_b", "m"] if spec.use_dora else ["lora_a", "lora_b"], strict=False)
        self.spec, self.keys, self.active_adapter, self._active_layers = spec, keys, name, layers

    def remove_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise BackendError(f"no adapter named {name!r} (loaded: {', '.join(self._adapters) or 'none'})")
        if name == self.active_adapter:
            self.model.update_modules(tree_unflatten([(p, self._base_layers[p]) for p in self._active_layers]))
            self.spec, self.keys, self.active_adapter, self._active_layers = None, None, None, {}
        del self._adapters[name]
        if self._prefixes is not None:
            self._prefixes.clear()

    def cache_prompts(self, entries: int) -> None:
        from backends.mlx.prompt_cache import Prefixes
        self._prefixes = Prefixes(self.model, entries) if entries else None

    def lora_weights(self) -> dict[str, np.ndarray]:
        from common.adapters.format import mlx_to_peft
        flat = dict(tree_flatten(self.model.trainable_parameters()))
        return mlx_to_peft({k: np.array(v.astype(mx.float32)) for k, v in flat.items()})

    def _load_into(self, layers: dict, weights: dict[str, np.ndarray], init: bool) -> None:
        """Set A, B (and DoRA's m) of `layers` from PEFT-named weights. Tensors for other modules are
        ignored. At init an adapter may lack the DoRA magnitude (the shared init draws A/B only):
        it is then PEFT's ‖W + s·BA‖ (= ‖W‖ when B = 0), so the model starts equal to base + LoRA."""
        native = peft_to_mlx(weights)
        for p, layer in layers.items():
            leaves = ("lora_a", "lora_b", "m") if "m" in layer else ("lora_a", "lora_b")
            for leaf in leaves:
                k = f"{p}.{leaf}"
                if k in native:
                    setattr(layer, leaf, mx.array(native[k]).astype(layer[leaf].dtype))
                elif leaf == "m" and init:
                    w = layer._dequantized_weight().astype(mx.float32)
                    delta = (layer.lora_b.T @ layer.lora_a.T).astype(mx.float32)
                    layer.m = mx.linalg.norm(w + layer.scale * delta, axis=1)
                else:
                    raise BackendError(f"adapter has no tensor for {k}")
        mx.eval([layer.parameters() for layer in layers.values()])

    # ------------------------------------------------------------ training
    def make_optimizer(self, betas, eps, weight_decay, kind="adamw") -> None:
        if kind not in self.capabilities.optimizers:
            raise BackendError(f"training.optimizer={kind} is a bitsandbytes (CUDA) optimizer",
                               where="training.optimizer", fix="use adamw with --backend mlx")
        self.optimizer = optim.AdamW(learning_rate=0.0, betas=list(betas), eps=eps,
                                     weight_decay=weight_decay, bias_correction=True)
        self.optimizer.init(self.model.trainable_parameters())
        self._step_count = 0

    def seed(self, seed: int) -> None:
        mx.random.seed(seed)

    def _loss_sum(self, model, ids, mask, keep=None, compiled: bool = False):
        """Summed token loss. `keep` = flat indices of the target positions (from the batch mask):
        only those go through the vocab-sized head, forward and backward (prompt and padding
        positions are never scored), on the families whose logits are exactly head(model.model(x)),
        the head being `lm_head` or the tied embedding (`plain_head` in common/models/families.py)."""
        if keep is not None and keep.size and family(getattr(model, "model_type", None)).plain_head:
            h = model.model(ids[:, :-1])
            h = h.reshape(-1, h.shape[-1])[keep]
            return _head_loss(model, h, ids[:, 1:].reshape(-1)[keep], COMPILED_LOSS_CHUNK_ELEMENTS if compiled else None)
        logits = model(ids[:, :-1]).astype(mx.float32)
        ce = cpu_kernels.cross_entropy(logits, ids[:, 1:], reduction="none")
        return (ce * mask[:, 1:]).sum()

    def _row_logps(self, model, ids, batch: Batch, keep):
        """[rows] summed log-probs of the masked tokens; on `plain_head` families only the
        target positions go through the head (as _loss_sum)."""
        y = ids[:, 1:].reshape(-1)[keep]
        if family(getattr(model, "model_type", None)).plain_head:
            h = model.model(ids[:, :-1])
            h = h.reshape(-1, h.shape[-1])[keep]
            tied = "lm_head" not in model
            logits = (model.model.embed_tokens.as_linear(h) if tied else model.lm_head(h)).astype(mx.float32)
        else:
            logits = model(ids[:, :-1]).astype(mx.float32)
            logits = logits.reshape(-1, logits.shape[-1])[keep]
        logp = -cpu_kernels.cross_entropy(logits, y, reduction="none")
        target_rows = np.nonzero(batch.mask[:, 1:] > 0)[0]      # the row of each target, in `keep`'s order
        rows = mx.array((np.arange(ids.shape[0])[:, None] == target_rows[None, :]).astype(np.float32))
        return (rows * logp[None, :]).sum(axis=1)

    def set_objective(self, objective, reference_adapter: str | None = None) -> None:
        self.objective, self.reference_adapter = objective, reference_adapter

    def reference_logps(self, batch: Batch, compiled: bool = False) -> np.ndarray:
        """Per-row summed completion log-probs of the reference, in eval mode: the base with the
        adapter layers swapped out (base_only), or the frozen adapter named by set_objective.
        The one base in memory serves both; nothing is copied. The attention path is the policy
        pass's (`compiled` as there), so a reference equal to the adapter scores exactly the same."""
        self.model.eval()
        ids, L = mx.array(batch.ids), batch.ids.shape[1] - 1
        plan = device.choices(self.model, batch.ids.shape[0], L)
        swap = self.base_only() if self.reference_adapter is None else self._adapter_held(self.reference_adapter)
        with swap, long_attention(self.model, L, exp=plan.exp(compiled), use=plan.chunked_attention), \
                cpu_kernels.in_model(self.model, plan.cpu_kernels, not plan.chunked_attention):
            out = self._row_logps(self.model, ids, batch, _targets(batch))
            mx.eval(out)
        return np.array(out)

    @contextlib.contextmanager
    def _adapter_held(self, name: str):
        """Adapter `name` active while the block runs, the previous one back after."""
        active = self.active_adapter
        self.set_active_adapter(name)
        try:
            yield
        finally:
            self.set_active_adapter(active)

    def distribute(self, world_size: int) -> None:
        """Nothing to wrap: mx.distributed sums the gradients in all_reduce, once per step."""

    def _value_and_grad(self, batch, ids, mask, targets, *, plan, ref=None, compiled: bool = False):
        """(loss, metric sums) of the objective and LoRA gradients; the chunked attention (when
        `plan` says so) in place while the graph is built."""
        L = ids.shape[1] - 1
        with long_attention(self.model, L, reuse_forward=self._checkpointed, exp=plan.exp(compiled),
                            use=plan.chunked_attention) as saved, \
                cpu_kernels.in_model(self.model, plan.cpu_kernels, not plan.chunked_attention), \
                packed_rows(self.model, batch.position_ids, L):
            def forward(model, ids, mask, targets):
                out = self.objective.loss(_Scores(self, batch, model, ids, mask, targets, ref, compiled))
                if saved is not None:
                    saved.backward = True      # from here on, layer recomputes take the saved attention
                return out
            return nn.value_and_grad(self.model, forward)(self.model, ids, mask, targets)

    def accumulate(self, batch: Batch, sync: bool = True) -> tuple[float, int]:
        L = batch.ids.shape[1] - 1        # the device's choices follow the longest attention (a packed row's longest sample)
        plan = device.choices(self.model, batch.ids.shape[0], attention_length(batch.position_ids, L))   # common/models/devices.py
        ref = self.reference_logps(batch, plan.compiled_step) if self.objective.needs_reference else None
        self.model.train()
        ids, mask = mx.array(batch.ids), mx.array(batch.mask)
        value_and_grad = partial(self._value_and_grad, batch, ref=ref, plan=plan)
        if plan.heap == "reuse":
            reuse_freed_memory()         # a chunk's scores are fresh mmaps otherwise (common/models/heap.py)
        if plan.compiled_step:
            # one compile per step, not cached: the targets' count changes the shapes every batch
            state = [self.model.state, mx.random.state]
            value_and_grad = mx.compile(partial(self._value_and_grad, batch, ref=ref, compiled=True, plan=plan),
                                        inputs=state, outputs=state)
        (loss, sums), grads = value_and_grad(ids, mask, _targets(batch))
        self._grads = grads if self._grads is None else tree_map(mx.add, self._grads, grads)
        mx.eval(loss, sums, self._grads)
        self.objective_sums = {k: float(v.item()) for k, v in sums.items()}
        return float(loss.item()), self.objective.count(batch)

    def apply_gradients(self, lr: float, n_targets: int, max_grad_norm: float | None) -> float:
        grads = tree_map(lambda g: g / max(n_targets, 1), self._grads)
        if max_grad_norm is not None:
            grads, norm = optim.clip_grad_norm(grads, max_grad_norm)
        else:
            norm = mx.sqrt(sum(mx.sum(g.astype(mx.float32) ** 2) for _, g in tree_flatten(grads)))
        self.optimizer.learning_rate = lr
        self.optimizer.update(self.model, grads)
        self._grads = None
        mx.eval(self.model.parameters(), self.optimizer.state)
        self._step_count += 1
        return float(norm.item())

    def all_reduce(self, scalars: list[float]) -> list[float]:
        """Data parallel: sum the accumulated gradients (one flat all_sum) and `scalars` (float64)
        over the mx.distributed group; see jobs/distributed.py."""
        flat = tree_flatten(self._grads)
        total = mx.distributed.all_sum(mx.concatenate([g.reshape(-1) for _, g in flat]))
        out, offset = [], 0
        for k, g in flat:
            out.append((k, total[offset: offset + g.size].reshape(g.shape)))
            offset += g.size
        self._grads = tree_unflatten(out)
        sums = mx.distributed.all_sum(mx.array(scalars, dtype=mx.float64), stream=mx.cpu)
        mx.eval(self._grads, sums)
        return sums.tolist()

    def optimizer_state(self) -> tuple[dict[str, np.ndarray], int]:
        flat = dict(tree_flatten(self.optimizer.state))
        moments = {}
        for k, v in flat.items():
            if "." not in k:
                continue  # step, learning_rate
            path, leaf = k.rsplit(".", 1)
            if leaf in ("m", "v") and path.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "m"):
                moments.setdefault(path, {})[leaf] = np.array(v.astype(mx.float32))
        out = {}
        for path, mv in moments.items():
            key, tr = mlx_key_to_peft(path)
            for which in ("m", "v"):
                out[f"{key}::{which}"] = np.ascontiguousarray(mv[which].T if tr else mv[which])
        return out, self._step_count

    def load_optimizer_state(self, state: dict[str, np.ndarray], step: int) -> None:
        if step == 0:
            return
        for key in {k.split("::")[0] for k in state}:
            for which in ("m", "v"):
                native = peft_to_mlx({key: state[f"{key}::{which}"]})
                (path, arr), = native.items()
                node = self.optimizer.state
                for part in path.split("."):
                    node = node[int(part)] if isinstance(node, list) else node[part]
                node[which] = mx.array(arr)
        self.optimizer.state["step"] = mx.array(step, dtype=mx.uint64)
        self._step_count = step
        mx.eval(self.optimizer.state)

    def eval_loss(self, batch: Batch) -> tuple[float, int]:
        ref = self.reference_logps(batch, compiled=True) if self.objective.needs_reference else None
        self.model.eval()
        L = batch.ids.shape[1] - 1
        plan = device.choices(self.model, batch.ids.shape[0], attention_length(batch.position_ids, L))
        with long_attention(self.model, L, exp=plan.exp(True), use=plan.chunked_attention), \
                cpu_kernels.in_model(self.model, plan.cpu_kernels, not plan.chunked_attention), \
                packed_rows(self.model, batch.position_ids, L):
            loss, sums = self.objective.loss(_Scores(self, batch, self.model, mx.array(batch.ids), mx.array(batch.mask),
                                                     _targets(batch), ref))
            mx.eval(loss, sums)
        self.objective_sums = {k: float(v.item()) for k, v in sums.items()}
        return float(loss.item()), self.objective.count(batch)

    # ------------------------------------------------------------ inference
    def logits(self, ids: np.ndarray) -> np.ndarray:
        self.model.eval()
        ids = np.asarray(ids)
        with self._inference_kernels(ids.shape[0], ids.shape[-1]):
            out = self.model(mx.array(ids)).astype(mx.float32)
            return np.array(out)

    def _inference_kernels(self, rows: int, length: int):
        """The device's CPU kernels (common/models/devices.py) around a forward pass or a generation
        loop: every token's graph is built inside the block."""
        return cpu_kernels.in_model(self.model, device.choices(self.model, rows, length).cpu_kernels)

    def generate(self, prompt_ids: list[int], max_new_tokens: int, eos_ids: list[int],
                 sampler=None, on_token=None) -> list[int]:
        """Greedy, or each token picked by `sampler` (common.training.sampling: numpy logits → id, the same
        draws as on torch); `on_token(id)` is called as each token is produced (streaming)."""
        from mlx_lm.generate import generate_step
        self.model.eval()
        if sampler is None:
            pick = lambda logprobs: mx.argmax(logprobs, axis=-1)  # noqa: E731
        else:
            pick = lambda logprobs: mx.array([sampler(np.array(logprobs[0].astype(mx.float32)))])  # noqa: E731
        weights = "base" if self._base_only or self.active_adapter is None else f"adapter:{self.active_adapter}"
        cache, rest = self._prefixes.start(weights, prompt_ids) if self._prefixes else (None, prompt_ids)
        out, seen = [], []
        with self._inference_kernels(1, len(prompt_ids) + max_new_tokens):
            for tok, _ in generate_step(mx.array(rest), self.model, max_tokens=max_new_tokens, sampler=pick,
                                        prompt_cache=cache):
                t = int(tok)
                seen.append(t)  # its keys and values are in the cache (generate_step computes one ahead)
                if t in eos_ids:
                    break
                out.append(t)
                if on_token is not None:
                    on_token(t)
        if self._prefixes:  # only an answer that ran to its end: an interrupted one leaves the cache unknown
            self._prefixes.keep(weights, list(prompt_ids) + seen, cache)
        return out

    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int, eos_ids: list[int]) -> list[list[int]]:
        """Greedy continuations of several prompts at once: mlx-lm's BatchGenerator (the prompts
        padded and masked in one KV cache per layer, each row's positions its own), every prompt
        in one prefill batch and one completion batch."""
        from mlx_lm.generate import BatchGenerator
        self.model.eval()
        n = len(prompts)
        gen = BatchGenerator(self.model, max_tokens=max_new_tokens, stop_tokens=[[t] for t in eos_ids],
                             prefill_batch_size=n, completion_batch_size=n)
        uids = gen.insert([list(p) for p in prompts], [max_new_tokens] * n)
        out = {uid: [] for uid in uids}
        try:
            with self._inference_kernels(n, max(map(len, prompts)) + max_new_tokens):
                while responses := gen.next_generated():
                    for r in responses:
                        if r.finish_reason != "stop":     # "stop": the end-of-turn token, not part of the answer
                            out[r.uid].append(int(r.token))
        finally:
            gen.close()
        return [out[uid] for uid in uids]

    @contextlib.contextmanager
    def base_only(self):
        """The base model without its adapter while the block runs (the layers are swapped back)."""
        name = self.active_adapter
        self.model.update_modules(tree_unflatten([(p, self._base_layers[p]) for p in self._active_layers]))
        self._base_only = True
        try:
            yield
        finally:
            self._base_only = False
            if name is not None:
                self.set_active_adapter(name)

    def merge_and_save(self, out_dir: Path) -> None:
        """Fold the active adapter into the base. A quantized base is de-quantized first (the
        adapter is added to dequant(Q(W)), the weights it was trained against) and the merged model
        is saved in the dtype of the base's weights on disk; the quantization error of the base
        stays in the merged weights (it is not recovered)."""
        from mlx_lm.utils import save_model
        if self.quantize:
            _dequantize_linears(self.model)  # before fusing: mlx-lm's fuse would add the adapter in bf16 (fp modes)
        fused = [(n, m.fuse(dequantize=True)) for n, m in self.model.named_modules() if hasattr(m, "fuse")]
        if fused:
            self.model.update_modules(tree_unflatten(fused))
        if self.quantize:
            disk = _disk_dtype(self.model_dir)
            if disk is not None:
                self.model.set_dtype(disk)
        out_dir = Path(out_dir)
        save_model(out_dir, self.model, donate_model=False)
        cfg = json.loads((self.model_dir / "config.json").read_text())
        cfg.pop("quantization", None)
        cfg.pop("quantization_config", None)
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        from common.models.resolve import normalize_config
        normalize_config(out_dir)

    def peak_memory_bytes(self) -> int:
        try:
            return int(mx.get_peak_memory())
        except AttributeError:
            return int(mx.metal.get_peak_memory())


class _Scores:
    """common.training.objectives.Scores for one batch on MLX, inside the traced loss: `model` and the
    arrays are the ones value_and_grad passes; `ref` the reference log-probs (numpy)."""

    def __init__(self, be: Backend, batch: Batch, model, ids, mask, keep, ref, compiled: bool = False):
        self.be, self.batch, self.model, self.ids, self.mask, self.keep = be, batch, model, ids, mask, keep
        self.ref, self.compiled = ref, compiled

    def token_loss_sum(self):
        return self.be._loss_sum(self.model, self.ids, self.mask, self.keep, compiled=self.compiled)

    def logps(self):
        return self.be._row_logps(self.model, self.ids, self.batch, self.keep)

    def reference_logps(self):
        return self.const(self.ref)

    def log_sigmoid(self, x):
        return nn.log_sigmoid(x)

    def const(self, values):
        return mx.array(np.asarray(values, dtype=np.float32))
