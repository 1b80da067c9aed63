"""PyTorch backend: transformers for the model, PEFT for the LoRA/DoRA layers, a plain loop.

Why not TRL's SFTTrainer: its semantics differ from mlx-lm's in ways that matter for parity
(its own masking, packing, grad-accumulation weighting, default clipping and schedule). The shared
layer already fixes all of those, so this backend only does forward/backward/step; TRL is the
baseline `cli.py bench` measures against.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backends.capabilities import DECLARED
from common.adapters.format import AdapterSpec, peft_config_dict
from common.training.batching import Batch
from common.models.devices import PAGED_OPTIMIZER_DEVICES, bnb_compute_dtype, check_four_bit, torch_choices, torch_device
from common.errors import BackendError
from common.models.families import family
from common.models.heap import release_freed_memory
from common.models.resolve import normalize_config
from common.training.objectives import SFT

# PEFT 0.21 reads a transformers attribute that transformers 5 deprecated: harmless, but noisy.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
# bitsandbytes (imported by PEFT when installed) warns at import that it cannot fetch a CPU bf16 kernel
# from the hub; that kernel is not used here (see _exact_cpu_4bit) and nothing is fetched at run time.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# tokens per row from which a CPU run with checkpointing gives freed memory back (common/models/heap.py:
# the page faults cost +55 % step time at 2048 tokens, ~0 at 8192)
LONG_ROWS = 4096
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device() -> str:
    """cuda, then mps, then cpu (TWINLORA_DEVICE overrides; common/models/devices.torch_device)."""
    mps = getattr(torch.backends, "mps", None)
    return torch_device(os.environ.get("TWINLORA_DEVICE"), torch.cuda.is_available(), bool(mps and mps.is_available()))


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP-sharded DTensor (a collective: every rank calls it), else `t`."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _like(p: torch.Tensor, value: np.ndarray) -> torch.Tensor:
    """`value` (a whole PEFT-shaped array) placed like parameter `p`: this rank's shard under FSDP."""
    t = torch.from_numpy(np.asarray(value)).to(p.dtype)
    if hasattr(p, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor
        return distribute_tensor(t, p.device_mesh, p.placements, src_data_rank=None)  # every rank has `value`
    return t.to(p.device)


def _common_key(name: str, adapter: str = "default") -> str | None:
    """PEFT parameter name (with adapter name `adapter`) → saved-file key."""
    if f".lora_A.{adapter}.weight" in name:
        return name.replace(f".lora_A.{adapter}.weight", ".lora_A.weight")
    if f".lora_B.{adapter}.weight" in name:
        return name.replace(f".lora_B.{adapter}.weight", ".lora_B.weight")
    if f".lora_magnitude_vector.{adapter}.weight" in name:
        return name.replace(f".lora_magnitude_vector.{adapter}.weight", ".lora_magnitude_vector")
    if name.endswith(f".lora_magnitude_vector.{adapter}"):
        return name[: -len(f".{adapter}")]
    return None


def _exact_cpu_4bit(model) -> None:
    """bitsandbytes' CPU inference kernel (used in eval mode on CPUs with AVX512-BF16) computes in
    bf16 whatever the compute dtype; its training path de-quantizes and multiplies in the compute
    dtype. Keep the latter everywhere, so logits, validation loss and training see the same weights
    (exactly dequant(NF4(W)))."""
    for mod in model.modules():
        if type(mod).__name__ == "Linear4bit":
            mod.support_avx512bf16_for_cpu = False


class Backend:
    name = "torch"
    capabilities = DECLARED["torch"]

    def __init__(self, model_dir: Path, dtype: str = "float32", quantize: str | None = None,
                 grad_checkpointing: bool = False, attn_implementation: str | None = None, fsdp: bool = False):
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.device = pick_device()
        self.model_dir = Path(model_dir)
        self.dtype = DTYPES[dtype]
        self.quantize = quantize
        # distribute() sets one of these; `sharded`: FSDP holds the weights, so forward passes and
        # weight reads are collectives that every rank must run
        self.fsdp, self.ddp, self.sharded = fsdp, None, False
        kwargs: dict = {"dtype": self.dtype, "use_safetensors": True}  # never a pickle (common.models.resolve)
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        self.dtype_name = dtype
        self.notes: list[str] = []  # printed by the trainer (e.g. "4-bit on CPU is slow")
        self.scheme = self.capabilities.check_quantize(quantize)  # common/models/quantize.py
        if self.scheme:
            kwargs["quantization_config"] = self._bnb_config()
            # this rank's GPU under --nproc/torchrun; bitsandbytes' CPU path otherwise
            kwargs["device_map"] = {"": torch.cuda.current_device() if self.device == "cuda" else self.device}
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
        if not self.scheme and not fsdp:
            self.model.to(self.device)  # under FSDP each layer moves to this rank's device as it is sharded
        if self.scheme:
            from peft import prepare_model_for_kbit_training
            if self.device == "cpu":
                _exact_cpu_4bit(self.model)
                self.notes.append(f"{self.scheme.label} ({self.scheme.name}) on CPU: every matmul de-quantizes its "
                                  "weight first, so training is slower than in float32 here; it saves memory, not time")
            self.model = prepare_model_for_kbit_training(self.model, use_gradient_checkpointing=grad_checkpointing)
        elif grad_checkpointing:
            kw = {"use_reentrant": False}
            if hasattr(self.model, "activation_checkpointing_enable"):   # transformers >= 5.2x's name
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
            self.model.enable_input_require_grads()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.config.use_cache = False
        self._checkpointing = bool(grad_checkpointing)
        self.objective, self.reference_adapter, self.objective_sums = SFT(), None, {}
        self.peft = None
        self.optimizer = None
        self.active_adapter = None
        self._specs: dict = {}  # adapter name -> (spec, {module path: shape}), for a merge that rebuilds the model
        self._base_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        # the base in `dtype` without quantization; a bitsandbytes Params4bit keeps its shape in quant_state
        self._full_bytes = sum(int(np.prod(qs.shape)) if (qs := getattr(p, "quant_state", None)) is not None
                               else p.numel() for p in self.model.parameters()) * self.dtype.itemsize

    def base_weight_bytes(self, unquantized: bool = False) -> int:
        """Bytes of the frozen base parameters in memory (with bitsandbytes: the packed 4-bit weights;
        their quantization state is not a parameter and is not counted; under FSDP: this rank's shard),
        or with `unquantized` what the whole base takes in model.dtype without quantization."""
        return int(self._full_bytes if unquantized else self._base_bytes)

    def _bnb_config(self):
        """The scheme's BitsAndBytesConfig (nf4-dq for 4bit). 4-bit compute dtype: bf16 on CUDA (fp16 below compute capability 8),
        the model dtype elsewhere (bitsandbytes >= 0.49 runs NF4 on CPU; float32 keeps parity exact)."""
        check_four_bit(self.device)            # not MPS (common/models/devices.py)
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise BackendError("4-bit quantization on the torch backend needs bitsandbytes, which is not "
                               "installed", where="model.quantize",
                               fix='pip install "bitsandbytes>=0.49" (scripts/setup.sh installs it), '
                               "or use --backend mlx") from exc
        from transformers import BitsAndBytesConfig
        major = torch.cuda.get_device_capability()[0] if self.device == "cuda" else None
        compute = DTYPES[bnb_compute_dtype(self.device, major, self.dtype_name)]
        if self.scheme.bits == 8:
            return BitsAndBytesConfig(**self.scheme.settings)
        return BitsAndBytesConfig(**self.scheme.settings, bnb_4bit_compute_dtype=compute)

    def dequantized_weights(self) -> dict[str, torch.Tensor]:
        """Module path → de-quantized weight (in the model dtype) of every quantized Linear: the base
        weights a QLoRA adapter is trained against, dequant(Q(W)) (for int8 the weight only: LLM.int8
        also rounds the activations, so its forward is close to, not equal to, dequant(W) x)."""
        import bitsandbytes.functional as bnbf
        out = {}
        for name, mod in self.base_model().named_modules():
            kind, w = type(mod).__name__, getattr(mod, "weight", None)
            if kind in ("Linear4bit", "Linear8bitLt") and ".lora_" not in name:
                path = name[: -len(".base_layer")] if name.endswith(".base_layer") else name
                deq = (bnbf.dequantize_4bit(w.data, w.quant_state) if kind == "Linear4bit"
                       else bnbf.int8_vectorwise_dequant(w.data, w.SCB))  # row-wise absmax / 127
                out[path] = deq.detach().to(self.dtype)
        return out

    # ------------------------------------------------------------ structure
    def linear_modules(self) -> dict[str, tuple[int, int]]:
        out = {}
        for name, mod in self.base_model().named_modules():
            if ".lora_" in name:
                continue  # PEFT's own lora_A/lora_B Linears
            if name.endswith(".base_layer"):
                name = name[: -len(".base_layer")]  # the base inside a PEFT LoRA layer
            if isinstance(mod, torch.nn.Linear) or type(mod).__name__ in ("Linear4bit", "Linear8bitLt"):
                out[name] = (mod.out_features, mod.in_features)
        return out

    def base_model(self):
        return self.peft.base_model.model if self.peft is not None else self.model

    def num_hidden_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    def attach_lora(self, spec: AdapterSpec, modules: dict[str, tuple[int, int]], weights: dict[str, np.ndarray]) -> None:
        """Wrap `modules` with PEFT LoRA/DoRA layers (adapter "default") and make it the active one."""
        self.add_adapter("default", spec, modules, weights)
        self.set_active_adapter("default")

    def add_adapter(self, name: str, spec: AdapterSpec, modules: dict[str, tuple[int, int]],
                    weights: dict[str, np.ndarray]) -> None:
        """Add a named adapter over the same base (PEFT `add_adapter`); active after `set_active_adapter`."""
        from peft import LoraConfig, get_peft_model

        self._specs[name] = (spec, dict(modules))
        cfg = peft_config_dict(spec)
        # Exact module paths, so PEFT adapts precisely the modules the shared layer chose.
        lc = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=sorted(modules), use_rslora=spec.use_rslora, use_dora=spec.use_dora,
                        bias=cfg["bias"], task_type="CAUSAL_LM")
        if self.peft is None:
            self.peft = get_peft_model(self.model, lc, adapter_name=name)
        else:
            self.peft.add_adapter(name, lc)
        if weights:
            self._load_into(self._adapter_params(name), weights, init=True)

    def _adapter_params(self, name: str) -> dict:
        return {key: p for n, p in self.peft.named_parameters() if (key := _common_key(n, name)) is not None}

    def set_active_adapter(self, name: str) -> None:
        if self.peft is None or name not in self.peft.peft_config:
            have = ", ".join(self.peft.peft_config) if self.peft is not None else "none"
            raise BackendError(f"no adapter named {name!r} (loaded: {have})")
        self.peft.set_adapter(name)
        self._params = self._adapter_params(name)
        for p in self.peft.parameters():
            p.requires_grad_(False)
        for p in self._params.values():
            p.requires_grad_(True)
        self.active_adapter = name

    def remove_adapter(self, name: str) -> None:
        """PEFT's delete_adapter. When it was the active one PEFT activates another, so
        active_adapter is None until one is set (the base answers under base_only)."""
        if self.peft is None or name not in self.peft.peft_config:
            have = ", ".join(self.peft.peft_config) if self.peft is not None else "none"
            raise BackendError(f"no adapter named {name!r} (loaded: {have})")
        self.peft.delete_adapter(name)
        self._specs.pop(name, None)
        if name == self.active_adapter:
            self.active_adapter, self._params = None, {}
        elif self.active_adapter is not None:
            self.set_active_adapter(self.active_adapter)

    def lora_weights(self) -> dict[str, np.ndarray]:
        """PEFT-named float32 copies; under FSDP gathered from the shards (every rank must call it)."""
        return {k: _full(p.detach()).to("cpu", torch.float32).numpy().copy() for k, p in self._params.items()}

    def _load_into(self, params: dict, weights: dict[str, np.ndarray], init: bool) -> None:
        """Copy PEFT-named weights into `params`. At init an adapter may lack the DoRA magnitude
        (the shared init draws A/B only): it is then set to PEFT's own init ‖W + s·BA‖ for the
        A/B just loaded (= ‖W‖ when B = 0), as the MLX backend does."""
        recompute = []
        with torch.no_grad():
            for k, p in params.items():
                if k in weights:
                    p.copy_(_like(p, weights[k]))
                elif init and k.endswith("lora_magnitude_vector"):
                    recompute.append(k)
                else:
                    raise BackendError(f"adapter has no tensor for {k}")
            for k in recompute:
                from peft.utils.integrations import dequantize_module_weight
                mod = self.peft.get_submodule(k[: -len(".lora_magnitude_vector")])
                name = next(n for n in mod.lora_magnitude_vector if params[k] is mod.lora_magnitude_vector[n].weight)
                w = dequantize_module_weight(mod.get_base_layer()).float()
                delta = mod.lora_B[name].weight.float() @ mod.lora_A[name].weight.float()
                params[k].copy_(torch.linalg.norm(w + mod.scaling[name] * delta, dim=1).to(params[k].dtype))

    # ------------------------------------------------------------ data parallel
    def distribute(self, world_size: int) -> None:
        """Hand the PEFT model to torch's data-parallel engine over the default process group:
        DistributedDataParallel (every rank holds the whole model; gradients all-reduced in the
        backward of each rank's last micro-batch) or FSDP2 `fully_shard` (each decoder layer and the
        root sharded over the ranks, base and LoRA weights alike; gradients reduce-scattered).
        Both average the gradients; all_reduce turns that back into the sum the trainer divides by
        the global target-token count (FSDP's divide factor 1 needs PREMUL_SUM, which gloo lacks)."""
        self._world = world_size
        if self.fsdp:
            self._shard(world_size)
            return
        import inspect

        from torch.nn.parallel import DistributedDataParallel
        # No syncing of states: every rank loaded the same base and drew the same LoRA init (seeded),
        # so broadcasting the whole model from rank 0 (at init, or its buffers at each forward) would
        # only cost time. (torch 2.13 renamed broadcast_buffers to forward_sync_buffers.)
        no_buffer_sync = ({"forward_sync_buffers": False}
                          if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                          else {"broadcast_buffers": False})
        self.ddp = DistributedDataParallel(self.peft, device_ids=[torch.cuda.current_device()] if self.device == "cuda" else None,
                                           init_sync=False, **no_buffer_sync)

    def _shard(self, world_size: int) -> None:
        """FSDP2 units: each decoder layer, then the root (embeddings, final norm, LM head). An FSDP
        unit gathers its parameters in one dtype, so when the LoRA weights are float32 over a
        bf16/fp16 base (PEFT's default) each LoRA module is a unit of its own and keeps computing in
        float32, exactly as in one process; casting it to the base dtype moved the weights by 2e-2."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        blocks = set(getattr(self.model, "_no_split_modules", None) or [])
        layers = [m for m in self.peft.modules() if type(m).__name__ in blocks]
        if not layers:
            raise BackendError(f"FSDP: no decoder-layer class known for {type(self.model).__name__}",
                               where="training.parallel", fix="use training.parallel: ddp for this model")
        mesh = init_device_mesh(self.device, (world_size,))
        trainable = set(self._params.values())
        if any(p.dtype != self.dtype for p in trainable):
            for mod in self.peft.modules():  # lora_A/lora_B Linears, DoRA magnitude holders
                if any(p in trainable for p in mod.parameters(recurse=False)):
                    fully_shard(mod, mesh=mesh)
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(self.peft, mesh=mesh)
        self.sharded = True
        self._params = self._adapter_params(self.active_adapter)  # fully_shard swapped in DTensor parameters
        trainable = set(self._params.values())
        self._base_bytes = sum(p.to_local().numel() * p.element_size()  # this rank's shard of the base
                               for p in self.peft.parameters() if p not in trainable)

    # ------------------------------------------------------------ training
    def make_optimizer(self, betas, eps, weight_decay, kind="adamw") -> None:
        params = list(self._params.values())
        if kind == "paged_adamw_8bit":
            if self.device not in PAGED_OPTIMIZER_DEVICES:
                # paging moves optimizer states through CUDA unified memory: nothing to page on a CPU
                raise BackendError("paged_adamw_8bit needs bitsandbytes on an NVIDIA GPU (it pages through CUDA "
                                   "unified memory)", where="training.optimizer",
                                   fix="use training.optimizer: adamw on this machine (QLoRA with model.quantize: "
                                   "4bit runs on CPU)")
            import bitsandbytes as bnb
            self.optimizer = bnb.optim.PagedAdamW8bit(params, lr=0.0, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=0.0, betas=tuple(betas), eps=eps,
                                               weight_decay=weight_decay, foreach=False)
        self.optimizer.zero_grad(set_to_none=True)

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def _loss_sum(self, batch: Batch, model=None) -> tuple[torch.Tensor, int]:
        ids = torch.from_numpy(batch.ids).long().to(self.device)
        mask = torch.from_numpy(batch.mask).to(self.device)
        model = model or (self.peft if self.peft is not None else self.model)
        kw = {}
        if batch.position_ids is not None:
            # Packed row: transformers turns restarting position_ids into a block-diagonal causal
            # mask (sdpa/eager) or varlen flash attention, so samples never attend to each other.
            kw["position_ids"] = torch.from_numpy(batch.position_ids[:, :-1]).long().to(self.device)
        # Project only the target positions through the LM head (transformers 5 `logits_to_keep`
        # boolean mask → logits [n_targets, V]): prompt and padding positions never reach the
        # (vocab-sized) head, forward or backward. Softcapping etc. stay the model's own.
        targets = mask[:, 1:] > 0
        if model is self.peft and self.peft is not None and not self.sharded:
            chunked = self._chunked_loss(ids, targets, batch.n_targets, kw)
            if chunked is not None:
                return chunked, batch.n_targets
        logits = model(input_ids=ids[:, :-1], logits_to_keep=targets, **kw).logits.float()
        if logits.dim() == 2:
            return F.cross_entropy(logits, ids[:, 1:][targets], reduction="sum"), batch.n_targets
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        return (ce * mask[:, 1:].reshape(-1)).sum(), batch.n_targets

    def _chunked_loss(self, ids, targets, n_targets: int, kw: dict):
        """The summed loss with the head over chunks of target rows (common/training/longseq.py), each chunk
        recomputed in the backward pass; None when the logits fit under the threshold, or the model
        is not a plain decoder + head (whose logits the CausalLM forward computes as head(h), with
        Gemma's final softcapping), or it is wrapped by DDP/FSDP (their hooks run in the forward)."""
        from common.training.longseq import loss_chunk_rows

        base = self.peft.get_base_model()
        head = base.get_output_embeddings()
        if not family(getattr(base.config, "model_type", None)).plain_head or head is None:
            return None
        rows = loss_chunk_rows(n_targets, head.weight.shape[0])
        if rows is None:
            return None
        from torch.utils.checkpoint import checkpoint

        h = base.model(input_ids=ids[:, :-1], **kw).last_hidden_state[targets]
        y = ids[:, 1:][targets]
        cap = getattr(base.config, "final_logit_softcapping", None)

        def piece(h, y):
            logits = head(h)
            if cap is not None:
                logits = torch.tanh(logits / cap) * cap
            return F.cross_entropy(logits.float(), y, reduction="sum")

        total = None
        for i in range(0, h.shape[0], rows):   # summed in the MLX backend's order
            part = checkpoint(piece, h[i: i + rows], y[i: i + rows], use_reentrant=False)
            total = part if total is None else total + part
        return total

    def _row_logps(self, batch: Batch, model) -> torch.Tensor:
        """[rows] summed log-probs of the masked tokens (only those rows reach the LM head)."""
        ids = torch.from_numpy(batch.ids).long().to(self.device)
        targets = torch.from_numpy(batch.mask[:, 1:] > 0).to(self.device)
        logits = model(input_ids=ids[:, :-1], logits_to_keep=targets).logits.float()
        if logits.dim() == 3:
            logits = logits[targets]
        logp = -F.cross_entropy(logits, ids[:, 1:][targets], reduction="none")
        rows = targets.nonzero()[:, 0]
        return torch.zeros(ids.shape[0], dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)

    def set_objective(self, objective, reference_adapter: str | None = None) -> None:
        self.objective, self.reference_adapter = objective, reference_adapter

    @torch.no_grad()
    def reference_logps(self, batch: Batch) -> np.ndarray:
        """Per-row summed completion log-probs of the reference, in eval mode: the base with the
        adapter disabled (PEFT's disable_adapter, as TRL with ref_model=None), or the frozen
        adapter named by set_objective (TRL's "ref" adapter). No second model in memory."""
        self.peft.eval()
        if self.reference_adapter is None:
            with self.base_only():
                out = self._row_logps(batch, self.peft)
        else:
            active = self.active_adapter
            self.set_active_adapter(self.reference_adapter)
            try:
                out = self._row_logps(batch, self.peft)
            finally:
                self.set_active_adapter(active)
        return out.cpu().numpy()

    def accumulate(self, batch: Batch, sync: bool = True) -> tuple[float, int]:
        """`sync` is False on all but this rank's last micro-batch of a step: DDP/FSDP then keep the
        gradient local and reduce once, in the last backward."""
        ref = self.reference_logps(batch) if self.objective.needs_reference else None
        self.peft.train()
        plan = torch_choices(self.device, batch.ids.shape[1], grad_checkpointing=self._checkpointing, long_rows=LONG_ROWS)
        if plan.heap == "release":
            release_freed_memory()     # else glibc keeps the freed activations (common/models/heap.py)
        if self.sharded:
            self.peft.set_requires_gradient_sync(sync)
        with self.ddp.no_sync() if self.ddp is not None and not sync else nullcontext():
            loss, sums = self.objective.loss(_Scores(self, batch, self.ddp, ref))
            loss.backward()
        self.objective_sums = {k: float(v.detach()) for k, v in sums.items()}
        return float(loss.detach()), self.objective.count(batch)

    def apply_gradients(self, lr: float, n_targets: int, max_grad_norm: float | None) -> float:
        params = list(self._params.values())
        for p in params:
            if p.grad is not None:
                p.grad.div_(max(n_targets, 1))
        if max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        norm = float(_full(norm))  # over all shards under FSDP
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def all_reduce(self, scalars: list[float]) -> list[float]:
        """Data parallel: the gradients were already summed over the ranks by DDP/FSDP in the last
        backward; sum `scalars` (loss sum, target tokens, tokens; float64) too. See jobs/distributed.py."""
        import torch.distributed as td
        if self.ddp is not None or self.sharded:
            for p in self._params.values():  # DDP and FSDP average over the N ranks: back to a sum
                if p.grad is not None:
                    p.grad.mul_(self._world)
        sums = torch.tensor(scalars, dtype=torch.float64, device="cuda" if td.get_backend() == "nccl" else "cpu")
        td.all_reduce(sums)
        return sums.tolist()

    def optimizer_state(self) -> tuple[dict[str, np.ndarray], int]:
        out, step = {}, 0
        for k, p in self._params.items():
            st = self.optimizer.state.get(p, {})
            if "exp_avg" in st:  # FSDP: gathered from the shards, so checkpoints are the same on any N
                out[k + "::m"] = _full(st["exp_avg"].detach()).cpu().float().numpy().copy()
                out[k + "::v"] = _full(st["exp_avg_sq"].detach()).cpu().float().numpy().copy()
                step = int(st["step"])
        return out, step

    def load_optimizer_state(self, state: dict[str, np.ndarray], step: int) -> None:
        if step == 0:
            return
        for k, p in self._params.items():
            self.optimizer.state[p] = {
                "step": torch.tensor(float(step)),
                "exp_avg": _like(p, state[k + "::m"]),
                "exp_avg_sq": _like(p, state[k + "::v"]),
            }

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> tuple[float, int]:
        ref = self.reference_logps(batch) if self.objective.needs_reference else None
        model = self.peft if self.peft is not None else self.model
        model.eval()
        loss, sums = self.objective.loss(_Scores(self, batch, None, ref))
        self.objective_sums = {k: float(v.detach()) for k, v in sums.items()}
        return float(loss), self.objective.count(batch)

    # ------------------------------------------------------------ inference
    @torch.no_grad()
    def logits(self, ids: np.ndarray) -> np.ndarray:
        model = self.peft if self.peft is not None else self.model
        model.eval()
        out = model(input_ids=torch.from_numpy(np.asarray(ids)).long().to(self.device)).logits
        return out.float().cpu().numpy()

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, eos_ids: list[int],
                 sampler=None, on_token=None) -> list[int]:
        """Greedy, or each token picked by `sampler` (common.training.sampling: numpy logits → id, the same
        draws as on MLX; transformers' own sampling is not used); `on_token(id)` streams."""
        model = self.peft if self.peft is not None else self.model
        model.eval()
        ids = torch.tensor([prompt_ids], device=self.device)
        extra = {}
        if sampler is not None:
            from transformers import LogitsProcessorList
            extra["logits_processor"] = LogitsProcessorList([_ForceSampled(sampler)])
        if on_token is not None:
            extra["streamer"] = _Stream(on_token, eos_ids)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos_ids, pad_token_id=eos_ids[0], use_cache=True, **extra)
        new = out[0, len(prompt_ids):].tolist()
        for i, t in enumerate(new):
            if t in eos_ids:
                return new[:i]
        return new

    def cache_prompts(self, entries: int) -> None:
        """Not kept on torch: HF generate computes every prompt in full (docs/serve.md says so)."""

    @contextlib.contextmanager
    def base_only(self):
        """The base model without its adapter while the block runs (PEFT's disable_adapter)."""
        if self.peft is None:
            yield
            return
        with self.peft.disable_adapter():
            yield

    @torch.no_grad()
    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int, eos_ids: list[int]) -> list[list[int]]:
        """Greedy continuations of several prompts at once (left-padded, masked)."""
        model = self.peft if self.peft is not None else self.model
        model.eval()
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), eos_ids[0], dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        out = model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_ids,
                             pad_token_id=eos_ids[0], use_cache=True)
        results = []
        for row in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in eos_ids), len(row))
            results.append(row[:cut])
        return results

    @torch.no_grad()
    def merge_and_save(self, out_dir: Path) -> None:
        """Fold the active adapter into the base and save. A 4-bit base is de-quantized first (the
        adapter is added to dequant(NF4(W)), the weights it was trained against), saved in the
        model dtype; PEFT's own merge would re-quantize the sum to 4 bits."""
        if self.quantize:
            self._merge_dequantized(Path(out_dir))
            return
        merged = self.peft.merge_and_unload(safe_merge=True) if self.peft is not None else self.model
        merged.config.use_cache = True
        merged.save_pretrained(str(out_dir), safe_serialization=True)
        normalize_config(Path(out_dir))

    def _merge_dequantized(self, out_dir: Path) -> None:
        """The float model with dequant(NF4(W)) in place of each quantized weight, plus the active
        adapter (same spec, same weights), merged by PEFT as for an unquantized base."""
        deq = self.dequantized_weights()
        adapter = (*self._specs[self.active_adapter], self.lora_weights()) if self.peft is not None else None
        plain = Backend(self.model_dir, dtype=self.dtype_name)
        with torch.no_grad():
            for path, w in deq.items():
                plain.model.get_submodule(path).weight.copy_(w.to(plain.model.device))
        if adapter is not None:
            plain.attach_lora(*adapter)
        plain.merge_and_save(out_dir)

    def peak_memory_bytes(self) -> int:
        if self.device == "cuda":
            return int(torch.cuda.max_memory_allocated())
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class _Scores:
    """common.training.objectives.Scores for one batch on torch: `model` is the forward to use (the DDP
    wrapper in training, None for the PEFT model); `ref` the reference log-probs (numpy)."""

    def __init__(self, be: Backend, batch: Batch, model, ref: np.ndarray | None):
        self.be, self.batch, self.model, self.ref = be, batch, model, ref

    def token_loss_sum(self):
        return self.be._loss_sum(self.batch, self.model)[0]

    def logps(self):
        return self.be._row_logps(self.batch, self.model or self.be.peft)

    def reference_logps(self):
        return self.const(self.ref)

    def log_sigmoid(self, x):
        return F.logsigmoid(x)

    def const(self, values):
        return torch.from_numpy(np.asarray(values, dtype=np.float32)).to(self.be.device)


class _ForceSampled:
    """A logits processor that lets common.training.sampling pick the token: every other token gets -inf,
    so transformers' greedy step takes exactly the sampled one."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        for row in range(scores.shape[0]):
            forced[row, self.sampler(scores[row].float().cpu().numpy())] = 0.0
        return forced


class _Stream:
    """transformers' streamer protocol (put/end): hands each new token id to `on_token`; the first
    put is the prompt, end-of-turn tokens are not streamed."""

    def __init__(self, on_token, eos_ids):
        self.on_token, self.eos_ids, self.prompt_seen = on_token, set(eos_ids), False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for t in value.reshape(-1).tolist():
            if t not in self.eos_ids:
                self.on_token(t)

    def end(self):
        pass
