"""`cli.py bench`: our training loops against the plain libraries, on the same model, data and LoRA.

Runs, one after another, each in its own Python subprocess (so peak RSS is per run):

- ours-mlx:   our MLX Backend driven by the training job's own step loop (jobs.fit: common.training.batching
              → Backend.accumulate / apply_gradients, common.training.schedule), without its validation,
              checkpoints and logs;
- mlx-lm:     plain `mlx_lm.tuner.trainer.train` with `linear_to_lora_layers` (same rank, scale,
              keys), its compiled step, its `default_loss` and its own collation (pads to 32·k + 1);
- ours-torch: the same loop over our torch Backend;
- trl:        plain TRL `SFTTrainer` + PEFT `LoraConfig` (completion_only_loss, no packing, no bf16,
              no gradient checkpointing, report_to none, max_grad_norm 1.0, cosine schedule).

With `--objective dpo` (issue 28) the runs train DPO on preference pairs (`--data PAIRS.jsonl`):
ours-mlx and ours-torch (the same loop with the DPO objective, reference = the adapter disabled)
beside TRL's `DPOTrainer` with `ref_model=None` (its reference is the PEFT adapter disabled too),
beta 0.1, sigmoid loss, our pairs in our order (TRL tokenizes them itself, identically:
tests/test_dpo.py). mlx-lm has no preference tuning, so ours-mlx has no plain counterpart there.
Peak RSS shows that ours holds no second model copy. Trained tokens = the non-padding tokens of the
chosen and rejected sequences, as TRL counts them; model FLOPs per token add the reference forward
(6·N_frozen + 6·N_trainable).

Fairness: every run starts from the same LoRA init (common.adapters.format.init_lora_weights), trains on
the same token ids with the same loss mask, in the same groups of examples and the same order
(the groups common.training.batching makes; the baselines get them through a sequential sampler (TRL) or
an `iterate_batches` that hands mlx-lm's own collation one group at a time). Warm-up steps run on a
separate pool of examples; the measured steps are exactly one pass over the measured pool, so
every run trains on the same multiset of examples there. The MLX runs both preload the same
OpenBLAS (backends.mlx.blas.preload_fast_blas) before importing mlx.

Step time = wall time between consecutive step ends (batch building, forward, backward, optimizer
and the run's own logging included). Trained tokens = non-padding tokens.
Model FLOPs per trained token (LoRA): 4·N_frozen + 6·N_trainable — frozen matmul weights need the
forward (2N) and the input gradient (2N) but no weight gradient; LoRA weights need all three.
N_frozen counts every matmul weight of the base, the LM head included (tied or not), the input
embedding lookup excluded; attention-score FLOPs (QKᵀ, AV) are left out (a conservative MFU).
MFU = model FLOP/s ÷ the fp32 matmul GFLOP/s measured in the same run (2048² matmuls, torch for
the torch runs and mlx for the MLX runs).
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from dataclasses import dataclass
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.defaults import BENCH as DEFAULTS  # noqa: E402  (after the sys.path line)

PLAIN = {"ours-mlx": "mlx-lm", "ours-torch": "trl"}
RAGGED_MIN = 16


# ------------------------------------------------------------------ data
def _text_corpus() -> str:
    """Real English text shipped with the repo (SQuAD excerpt), or a fixed fallback."""
    squad = ROOT / "data" / "squad" / "dev-v2.0-sample.json"
    try:
        d = json.loads(squad.read_text(encoding="utf-8"))
        parts = [p["context"] + "\n" + "\n".join(q["question"] for q in p["qas"])
                 for a in d["data"] for p in a["paragraphs"]]
        return "\n\n".join(parts)
    except (OSError, ValueError, KeyError):
        return " ".join(["The court held that the appeal was admissible and well founded, and it set aside "
                         "the decision of the lower court."] * 300)


def synth_examples(tokenizer, n: int, max_length: int, ragged: bool, seed: int, min_frac: float = 0.85) -> list:
    """`n` prompt/completion examples cut from real text, deterministic in `seed`.

    uniform: total lengths uniform in [min_frac·max_length, max_length] (min_frac 1: all max_length);
    ragged:  log-uniform in [16, max_length] (many short, few long, as in real SFT sets).
    The prompt is 30–60 % of the example and masked out of the loss; the completion ends with EOS.
    """
    from common.training.tokenize import Tokenized

    stream = list(tokenizer(_text_corpus(), add_special_tokens=False)["input_ids"])
    while len(stream) < 2 * max_length + 1:
        stream = stream + stream
    eos = tokenizer.eos_token_id
    rng = np.random.default_rng([seed, 1 if ragged else 0, max_length])
    lo = min(RAGGED_MIN, max_length) if ragged else max(4, int(min_frac * max_length))
    out = []
    for _ in range(n):
        if ragged:
            L = int(round(math.exp(rng.uniform(math.log(lo), math.log(max_length)))))
        else:
            L = int(rng.integers(lo, max_length + 1))
        p = max(1, int(round(L * rng.uniform(0.3, 0.6))))
        c = L - p
        o1, o2 = (int(x) for x in rng.integers(0, len(stream) - max_length, 2))
        ids = stream[o1: o1 + p] + stream[o2: o2 + c - 1] + [eos]
        out.append(Tokenized(tuple(ids), tuple([0] * p + [1] * c), "synthetic"))
    return out


def user_examples(path: str, tokenizer, max_length: int) -> list:
    """A JSONL in any of our formats, through our Tokenizer (chat template, prompt masked)."""
    from common.data.formats import load_examples
    from common.training.tokenize import Tokenizer
    return Tokenizer(tokenizer, "chat", None, True, max_length, "truncate").encode_all(load_examples(path), path)


@dataclass(frozen=True)
class BenchPair:
    """A tokenized preference pair (common.training.pairs) and its record as TRL gets it."""
    chosen: Any
    rejected: Any
    record: dict


def _record(pair) -> dict:
    """A common.data.pairs.Pair as a TRL preference record (text, or lists of messages)."""
    side = lambda v: v if isinstance(v, str) else [dict(m) for m in v]  # noqa: E731
    return {"prompt": side(pair.prompt), "chosen": side(pair.chosen), "rejected": side(pair.rejected)}


def user_pairs(path: str, tokenizer, max_length: int) -> list[BenchPair]:
    """A preference-pair JSONL (TRL's shapes), tokenized as a DPO run does (common.training.pairs)."""
    from common.data.pairs import load_pairs
    from common.training.pairs import PairTokenizer
    enc = PairTokenizer(tokenizer, "chat", None, max_length, "truncate")
    return [BenchPair(t.chosen, t.rejected, _record(p)) for p in load_pairs(path) if (t := enc.encode(p)) is not None]


# ------------------------------------------------------------------ model facts (for MFU)
def model_facts(model_dir: Path, spec_lora) -> dict:
    """Parameter counts from the safetensors headers (no framework needed)."""
    from safetensors import safe_open

    from common.adapters.format import spec_from_config

    shapes = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            for k in st.keys():
                shapes[k] = tuple(st.get_slice(k).get_shape())
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    total = sum(int(np.prod(s)) for s in shapes.values())
    emb = next((s for k, s in shapes.items() if k.endswith("embed_tokens.weight")), None)
    head = shapes.get("lm_head.weight")
    emb_n = int(np.prod(emb)) if emb else 0
    head_n = int(np.prod(head)) if head else emb_n          # tied: the embedding is the head
    n_frozen = total - emb_n + (head_n if head is None else 0)
    linears = {k[: -len(".weight")]: s for k, s in shapes.items() if k.endswith(".weight") and len(s) == 2
               and not k.endswith(("embed_tokens.weight", "lm_head.weight"))}
    _, modules = spec_from_config(spec_lora, linears, int(cfg["num_hidden_layers"]), str(model_dir))
    n_train = sum(spec_lora.rank * (o + i) for o, i in modules.values())
    heads = int(cfg["num_attention_heads"])
    return {"params_total": total, "n_frozen": n_frozen, "n_trainable": n_train,
            "flops_per_token": 4 * n_frozen + 6 * n_train, "modules": len(modules),
            "num_hidden_layers": int(cfg["num_hidden_layers"]), "num_attention_heads": heads,
            "head_dim": int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)}


# ------------------------------------------------------------------ worker side
def _peak_rss() -> int:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def _row_json(r) -> list:
    """An example ([ids, mask]) or a BenchPair ([chosen ids, mask, rejected ids, mask, record]) for the data file."""
    if hasattr(r, "chosen"):
        return [list(r.chosen.ids), list(r.chosen.mask), list(r.rejected.ids), list(r.rejected.mask), r.record]
    return [list(r.ids), list(r.mask)]


def _row_from_json(r: list):
    from common.training.tokenize import Tokenized
    if len(r) == 2:
        return Tokenized(tuple(r[0]), tuple(r[1]))
    return BenchPair(Tokenized(tuple(r[0]), tuple(r[1])), Tokenized(tuple(r[2]), tuple(r[3])), r[4])


def _row_length(r) -> int:
    return max(len(r.chosen.ids), len(r.rejected.ids)) if hasattr(r, "chosen") else len(r.ids)


def _row_weight(r) -> int:
    """What a step's loss is averaged over: target tokens (SFT), pairs (DPO)."""
    return 1 if hasattr(r, "chosen") else r.n_targets


def _load_rows(spec: dict) -> tuple[list, list]:
    d = json.loads(Path(spec["data_file"]).read_text())
    return [_row_from_json(r) for r in d["warm"]], [_row_from_json(r) for r in d["main"]]


def _lora(spec: dict):
    from common.config.schema import LoraConfig
    t = spec["targets"]
    return LoraConfig(rank=spec["rank"], alpha=spec["alpha"], dropout=0.0,
                      target_modules=t if t == "all-linear" else list(t))


def _ordered_rows(spec: dict, warm: list, main: list) -> list:
    """The examples in training order: warm-up groups, then measured groups."""
    return [warm[i] for g in spec["warm_groups"] for i in g] + [main[i] for g in spec["main_groups"] for i in g]


def _calibrate(framework: str, n: int = 2048, reps: int = 6) -> dict:
    """fp32 matmul GFLOP/s of this machine for one framework."""
    if framework == "mlx":
        from backends.mlx.blas import preload_fast_blas
        blas = preload_fast_blas()
        import mlx.core as mx
        a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
        mx.eval(a, b)
        for _ in range(2):
            mx.eval(a @ b)
        t = time.perf_counter()
        for _ in range(reps):
            mx.eval(a @ b)
        dt = time.perf_counter() - t
        return {"gflops": 2 * n ** 3 * reps / dt / 1e9, "device": str(mx.default_device()), "blas": blas}
    import torch
    dev = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    sync = (lambda: torch.cuda.synchronize()) if dev == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    reps = reps * 20 if dev == "cuda" else reps
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    dt = time.perf_counter() - t
    return {"gflops": 2 * n ** 3 * reps / dt / 1e9, "device": dev, "threads": torch.get_num_threads()}


def _run_ours(spec: dict) -> dict:
    """Our training step, as `train` runs it: jobs.fit over our Backend (no validation, no checkpoints)."""
    from itertools import chain, islice

    from backends import get_backend
    from common.adapters.format import init_lora_weights, spec_from_config
    from common.training.batching import iterate_batches
    from jobs.fit import StepRule, fit

    blas = None
    if spec["backend"] == "mlx":
        from backends.mlx.blas import preload_fast_blas
        blas = preload_fast_blas()
    warm, main = _load_rows(spec)
    be = get_backend(spec["backend"])(Path(spec["model_dir"]), dtype=spec["dtype"],
                                      attn_implementation=spec.get("attn_implementation"),
                                      grad_checkpointing=bool(spec.get("grad_checkpointing")))
    lspec, modules = spec_from_config(_lora(spec), be.linear_modules(), be.num_hidden_layers(), spec["model"])
    be.attach_lora(lspec, modules, init_lora_weights(lspec, modules, spec["seed"]))
    be.make_optimizer((0.9, 0.999), 1e-8, 0.0, "adamw")
    if spec.get("objective") == "dpo":
        from common.training.objectives import DPO
        be.set_objective(DPO(spec["beta"]), None)     # reference: the adapter disabled, as TRL's ref_model=None
    pad = spec["pad_id"]
    bs, mode, seed = spec["batch_size"], spec["batching"], spec["seed"]
    total = spec["warmup"] + spec["steps"]
    # Built lazily, inside the timed step, as the baselines' data loaders are.
    batches = chain(islice(iterate_batches(warm, bs, pad, seed, mode), spec["warmup"]) if spec["warmup"] else [],
                    islice(iterate_batches(main, bs, pad, seed, mode), spec["steps"]))
    times, losses, tokens, padded = [], [], [], []
    prev = [time.perf_counter()]

    def record(r) -> None:  # step time = wall time between consecutive step ends, as for the baselines
        now = time.perf_counter()
        times.append(now - prev[0])
        prev[0] = now
        losses.append(r.loss)
        tokens.append(r.tokens)
        padded.append(r.slots)

    fit(be, batches, StepRule(total, spec["lr"], "cosine", 0, 0.0, max_grad_norm=1.0, seed=seed), 0, total,
        callbacks=[record])
    fw_peak = None
    if spec["backend"] == "mlx":
        fw_peak = be.peak_memory_bytes()
    elif be.device == "cuda":
        import torch
        fw_peak = int(torch.cuda.max_memory_allocated())
    return {"step_s": times, "loss": losses, "tokens": tokens, "slots": padded, "device": be.device,
            "framework_peak_bytes": fw_peak, "blas": blas}


def _mlx_lm_model(spec: dict):
    """(model with mlx-lm's LoRA layers holding our initial weights, its trainable parameter count)."""
    import mlx.core as mx
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load_model

    from backends.mlx.families import config_overrides   # what transformers 5 nests, read by mlx-lm
    from common.adapters.format import block_relative, init_lora_weights, mlx_keys, peft_to_mlx, spec_from_config

    model_dir = Path(spec["model_dir"])
    model, _ = load_model(model_dir, model_config=config_overrides(model_dir))
    if spec["dtype"] != "float32":
        model.set_dtype(getattr(mx, spec["dtype"]))
    model.freeze()
    linears = {n: tuple(m.weight.shape) for n, m in model.named_modules() if type(m).__name__ == "Linear"}
    lspec, modules = spec_from_config(_lora(spec), linears, len(model.layers), spec["model"])
    keys = mlx_keys(lspec, [block_relative(p) for p in modules])
    n_layers = len(model.layers) if lspec.layers is None else len(lspec.layers)
    linear_to_lora_layers(model, n_layers, {"rank": lspec.rank, "scale": lspec.scale, "dropout": 0.0, "keys": keys})
    init = peft_to_mlx(init_lora_weights(lspec, modules, spec["seed"]))
    model.load_weights([(k, mx.array(v)) for k, v in init.items()], strict=False)
    n_trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    return model, n_trainable


def _run_mlx_lm(spec: dict) -> dict:
    from backends.mlx.blas import preload_fast_blas
    blas = preload_fast_blas()      # the same BLAS as our MLX backend: a like-for-like comparison
    import tempfile

    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.tuner.trainer import iterate_batches as mlx_iterate_batches

    warm, main = _load_rows(spec)
    model, n_trainable = _mlx_lm_model(spec)
    total = spec["warmup"] + spec["steps"]
    # AdamW with bias correction (mlx's default is off) so both MLX runs do the same math; speed is
    # unaffected. mlx-lm has no clipping. Cosine decay over the run, as ours.
    opt = optim.AdamW(learning_rate=optim.cosine_decay(spec["lr"], total, 0.0), betas=[0.9, 0.999],
                      eps=1e-8, weight_decay=0.0, bias_correction=True)
    rows = _ordered_rows(spec, warm, main)
    dataset = [(list(r.ids), int(np.argmax(np.asarray(r.mask) > 0))) for r in rows]   # (tokens, prompt offset)
    bs = spec["batch_size"]
    slots = []

    def our_groups(dataset, batch_size, max_seq_length, loop=False, seed=None, comm_group=None):
        # Our groups in our order, each collated by mlx-lm's own iterate_batches (its padding rule).
        for i in range(0, len(dataset), batch_size):
            b, lengths = next(mlx_iterate_batches(dataset[i: i + batch_size], batch_size, max_seq_length))
            slots.append(int(b.size))
            yield b, lengths

    times, losses = [], []
    state = {"prev": None}

    class CB(TrainingCallback):
        def on_train_loss_report(self, info):
            now = time.perf_counter()
            times.append(now - state["prev"])
            state["prev"] = now
            losses.append(float(info["train_loss"]))

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArgs(batch_size=bs, iters=total, steps_per_report=1, steps_per_eval=10 ** 9,
                            steps_per_save=10 ** 9, max_seq_length=spec["max_length"],
                            grad_checkpoint=bool(spec.get("grad_checkpointing")),
                            adapter_file=str(Path(tmp) / "adapters.safetensors"))
        state["prev"] = time.perf_counter()
        train(model, opt, dataset, None, args, iterate_batches=our_groups, training_callback=CB())
    tokens = [sum(len(r.ids) for r in rows[i: i + bs]) for i in range(0, len(rows), bs)]
    return {"step_s": times, "loss": losses, "tokens": tokens[: len(times)], "slots": slots[: len(times)],
            "device": str(mx.default_device()), "framework_peak_bytes": int(mx.get_peak_memory()),
            "blas": blas, "n_trainable": int(n_trainable)}


def _trl_model(spec: dict):
    """(tokenizer, model, LoRA spec, modules) for a TRL run, as ours would build them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.adapters.format import spec_from_config
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    kw = {"dtype": getattr(torch, spec["dtype"])}
    if spec.get("attn_implementation"):
        kw["attn_implementation"] = spec["attn_implementation"]
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], **kw)
    linears = {n: (m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    lspec, modules = spec_from_config(_lora(spec), linears, int(model.config.num_hidden_layers), spec["model"])
    return tok, model, lspec, modules


def _trl_clock(times: list, losses: list):
    """A TrainerCallback that records each step's wall time (between step ends) and logged loss."""
    from transformers import TrainerCallback
    state = {"prev": None}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, st, control, **kw):
            state["prev"] = time.perf_counter()

        def on_step_end(self, args, st, control, **kw):
            now = time.perf_counter()
            times.append(now - state["prev"])
            state["prev"] = now

        def on_log(self, args, st, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
    return Clock()


def _trl_args(spec: dict, out: str) -> dict:
    """The TrainingArguments both TRL trainers get: ours' schedule, clipping, order and precision."""
    import torch
    gc = bool(spec.get("grad_checkpointing"))
    return dict(output_dir=out, max_steps=spec["warmup"] + spec["steps"], per_device_train_batch_size=spec["batch_size"],
                gradient_accumulation_steps=1, learning_rate=spec["lr"], lr_scheduler_type="cosine",
                warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1,
                save_strategy="no", report_to="none", bf16=False, fp16=False, gradient_checkpointing=gc,
                gradient_checkpointing_kwargs={"use_reentrant": False} if gc else None,
                max_length=spec["max_length"], seed=spec["seed"], train_sampling_strategy="sequential",
                dataloader_num_workers=0, disable_tqdm=True, use_cpu=not torch.cuda.is_available())


def _trl_train(spec: dict, trainer, lspec, modules) -> str:
    """Copy our LoRA init into the trainer's PEFT model (the same starting point as every other
    run), train, and return the device it ran on."""
    import torch

    from common.adapters.format import init_lora_weights
    init = init_lora_weights(lspec, modules, spec["seed"])
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            key = name.replace(".default.weight", ".weight")
            if key in init:
                p.copy_(torch.from_numpy(init[key]))
                init.pop(key)
    assert not init, f"TRL model lacks {next(iter(init))}"
    trainer.train()
    return str(trainer.args.device)


def _trl_result(spec: dict, rows: list, times: list, losses: list, device: str) -> dict:
    """Per-step tokens and padded slots of our groups (TRL pads each group to its longest row)."""
    import torch
    bs = spec["batch_size"]
    groups = [rows[i: i + bs] for i in range(0, len(rows), bs)]
    seqs = [[x for r in g for x in ((r.chosen, r.rejected) if hasattr(r, "chosen") else (r,))] for g in groups]
    tokens = [sum(len(x.ids) for x in g) for g in seqs]
    slots = [len(g) * max(len(x.ids) for x in g) for g in seqs]
    fw_peak = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    return {"step_s": times, "loss": losses, "tokens": tokens[: len(times)], "slots": slots[: len(times)],
            "device": device, "framework_peak_bytes": fw_peak, "blas": None}


def _run_trl(spec: dict) -> dict:
    """Plain TRL SFTTrainer + PEFT on our examples, in our groups and order."""
    import tempfile

    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    tok, model, lspec, modules = _trl_model(spec)
    rows = _ordered_rows(spec, *_load_rows(spec))
    ds = Dataset.from_dict({"input_ids": [list(r.ids) for r in rows], "completion_mask": [list(r.mask) for r in rows]})
    times, losses = [], []
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(**_trl_args(spec, tmp), completion_only_loss=True, packing=False, padding_free=False)
        peft_config = LoraConfig(r=lspec.rank, lora_alpha=lspec.alpha, lora_dropout=0.0,
                                 target_modules=sorted(modules), task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                             peft_config=peft_config, callbacks=[_trl_clock(times, losses)])
        device = _trl_train(spec, trainer, lspec, modules)
    return _trl_result(spec, rows, times, losses, device)


def _run_trl_dpo(spec: dict) -> dict:
    """Plain TRL DPOTrainer with ref_model=None (the reference is the PEFT adapter disabled) on our
    pairs in our order; TRL tokenizes the records itself."""
    import tempfile

    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    tok, model, lspec, modules = _trl_model(spec)
    rows = _ordered_rows(spec, *_load_rows(spec))
    times, losses = [], []
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(**_trl_args(spec, tmp), beta=spec["beta"], loss_type=["sigmoid"])
        peft_config = LoraConfig(r=lspec.rank, lora_alpha=lspec.alpha, lora_dropout=0.0,
                                 target_modules=sorted(modules), task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=model, ref_model=None, args=args, processing_class=tok, peft_config=peft_config,
                             train_dataset=Dataset.from_list([r.record for r in rows]),
                             callbacks=[_trl_clock(times, losses)])
        device = _trl_train(spec, trainer, lspec, modules)
    return _trl_result(spec, rows, times, losses, device)


def _worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec["runner"].startswith("calib-"):
        res = _calibrate(spec["runner"][len("calib-"):])
    else:
        trl = _run_trl_dpo if spec.get("objective") == "dpo" else _run_trl
        res = {"ours-mlx": _run_ours, "ours-torch": _run_ours, "mlx-lm": _run_mlx_lm, "trl": trl}[spec["runner"]](spec)
    res["peak_rss_bytes"] = _peak_rss()
    if not spec["runner"].startswith("calib-"):
        # Measured after the run (peak memory already taken): the parent uses the best of all these
        # measurements as the machine's matmul peak, which is robust to other load on the machine.
        res["calibration"] = _calibrate(spec["backend"], reps=3)
    from common.runs.io import write_text
    write_text(spec["result"], json.dumps(res))  # atomic: a killed worker leaves no torn result


# ------------------------------------------------------------------ parent side
def _env(spec: dict) -> dict:
    """A worker's environment: this checkout first on the path, offline, quiet, `threads` threads."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    if spec.get("threads"):
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(spec["threads"])
    return env


def _worker_cmd(spec_path: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]


def _launch(spec: dict, work: Path, name: str, timeout: int, echo) -> dict:
    spec = dict(spec, result=str(work / f"{name}.result.json"))
    sp = work / f"{name}.spec.json"
    sp.write_text(json.dumps(spec))
    env = _env(spec)
    log = work / f"{name}.log"
    t = time.time()
    with open(log, "w") as fh:
        proc = subprocess.run(_worker_cmd(sp), cwd=str(ROOT),
                              env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0 or not Path(spec["result"]).is_file():
        from common.errors import TrainingError
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise TrainingError(f"benchmark run {name} failed (exit {proc.returncode}): {tail[0][:300]}", where=str(log),
                            fix="read the log; run fewer backends (--backend) or smaller sizes")
    res = json.loads(Path(spec["result"]).read_text())
    res["wall_s"] = time.time() - t
    return res


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _summ(results: list[dict], warmup: int, step_targets: list[int]) -> dict:
    """Median over repeats of each repeat's measured-steps figures (and the best repeat's tok/s)."""
    per = []
    for r in results:
        m = slice(warmup, None)
        st, tk, sl = r["step_s"][m], r["tokens"][m], r["slots"][m]
        ls, tg = r["loss"][m], step_targets[m]
        per.append({"tok_s": sum(tk) / sum(st), "step_s": statistics.median(st), "pad": 1 - sum(tk) / sum(sl),
                    "loss": r["loss"][-1] if r["loss"] else float("nan"),
                    "pass_loss": sum(a * b for a, b in zip(ls, tg)) / max(sum(tg[: len(ls)]), 1),
                    "rss": r["peak_rss_bytes"], "fw": r.get("framework_peak_bytes")})
    med = lambda k: statistics.median(p[k] for p in per)  # noqa: E731
    fw = [p["fw"] for p in per if p["fw"] is not None]
    return {"tok_s": med("tok_s"), "best_tok_s": max(p["tok_s"] for p in per),
            "worst_tok_s": min(p["tok_s"] for p in per), "step_s": med("step_s"),
            "pad": med("pad"), "loss": med("loss"), "pass_loss": med("pass_loss"),
            "rss": max(p["rss"] for p in per), "fw": max(fw) if fw else None,
            "device": results[0].get("device"), "blas": results[0].get("blas"), "repeats": per}


def work_dir(out_dir: Path) -> Path:
    """out_dir/work, with the marker that makes out_dir a bench directory (common.runs.ownership), so a
    rerun of an interrupted bench may write there again and nothing else of the user's is."""
    from common.runs.io import write_json
    from common.runs.ownership import BENCH_MARKER
    work = Path(out_dir) / "work"
    work.mkdir(parents=True, exist_ok=True)
    write_json(Path(out_dir) / BENCH_MARKER, {"kind": "twinlora bench", "format": 1})
    return work


def run_bench(model: str = DEFAULTS["model"], data: str | None = None, steps: int = DEFAULTS["steps"],
              warmup: int = DEFAULTS["warmup"], repeats: int = DEFAULTS["repeats"],
              batch_size: int = DEFAULTS["batch_size"], max_length: int = DEFAULTS["max_length"],
              rank: int = DEFAULTS["rank"], backends: list[str] | tuple[str, ...] = DEFAULTS["backends"],
              ragged: bool = True, out_dir: Path = Path(DEFAULTS["output"]), echo=print, *, alpha: float | None = None,
              targets: str | list[str] = ("q_proj", "v_proj"), lr: float = 1e-4, seed: int = 0,
              dtype: str = "float32", attn_implementation: str | None = None, threads: int | None = None,
              timeout: int = 3600, objective: str = DEFAULTS["objective"], beta: float = 0.1) -> dict:
    """Train ours and the plain library on each backend, on uniform data (or `data`) and, with
    `ragged`, on ragged data; write bench.md and bench.json into out_dir; return the results.
    objective "dpo": DPO on the preference pairs of `data` (ours vs TRL's DPOTrainer), no ragged set."""
    from common.config.schema import LoraConfig
    from common.models.resolve import resolve_model
    from common.training.tokenize import load_tokenizer

    _check_options(steps, warmup, repeats, batch_size, max_length, rank)
    _check_objective(objective, data)
    ragged = ragged and objective == "sft"
    work = work_dir(out_dir)
    out_dir = Path(out_dir)
    fams = families(backends)
    _check_installed(fams)
    alpha = float(alpha if alpha is not None else 2 * rank)
    targets = target_list(targets)
    model_dir = resolve_model(model)
    tok = load_tokenizer(model_dir)
    facts = model_facts(model_dir, LoraConfig(rank=rank, alpha=alpha, target_modules=targets))
    if objective == "dpo":   # the reference forward pass: 2·N_frozen more per token
        facts["flops_per_token"] += 2 * facts["n_frozen"]
    datasets = _datasets(tok, data, warmup * batch_size, steps * batch_size, max_length, ragged, seed, objective)
    base = dict(model=model, model_dir=str(model_dir), steps=steps, warmup=warmup, batch_size=batch_size,
                max_length=max_length, rank=rank, alpha=alpha, targets=targets, lr=lr, seed=seed, dtype=dtype,
                attn_implementation=attn_implementation, pad_id=tok.pad_token_id, threads=threads,
                objective=objective, beta=beta, data=data)
    plan = _plan(datasets, fams, objective)
    echo(_header(base, facts, repeats, len(plan)))
    calib = _calibrate_all(fams, work, threads, timeout, echo)
    specs = _specs(plan, datasets, base, work)
    results = _run_repeats(specs, repeats, warmup, work, timeout, echo)
    _best_peaks(specs, results, calib)
    rows = _rows(specs, results, warmup, facts, calib)
    result = _result(base, results, repeats, fams, facts, calib, rows)
    _write_bench(result, out_dir, echo)
    return result


# ------------------------------------------------------------------ run_bench's stages
def _check_options(steps: int, warmup: int, repeats: int, batch_size: int, max_length: int, rank: int) -> None:
    """Refuse sizes that cannot make a measured run, before anything is loaded."""
    from common.errors import ConfigError
    if steps < 1 or warmup < 0 or repeats < 1 or batch_size < 1 or max_length < 8 or rank < 1:
        raise ConfigError("bench needs steps, repeats, batch size, rank >= 1, warmup >= 0, max length >= 8",
                          where="bench options", fix="check --steps/--warmup/--repeats/--batch-size/--max-length")


def _check_objective(objective: str, data: str | None) -> None:
    """DPO is timed on the user's preference pairs: there is no synthetic pair set."""
    from common.errors import ConfigError
    if objective == "dpo" and not data:
        raise ConfigError("bench --objective dpo needs preference pairs to train on", where="--objective dpo",
                          fix="add --data PAIRS.jsonl ({\"prompt\", \"chosen\", \"rejected\"} records, e.g. a "
                              "`prepare pairs` train.jsonl)")


def families(backends) -> list[str]:
    """The backend families asked for, each once, in the order given (aliases folded)."""
    from backends import canonical
    fams = []
    for b in backends:
        c = canonical(b)
        if c not in fams:
            fams.append(c)
    return fams


def _check_installed(fams: list[str]) -> None:
    """Name the missing packages now rather than as a failed worker minutes later."""
    import importlib.util

    from common.errors import BackendError
    needs = {"mlx": ["mlx", "mlx_lm"], "torch": ["torch", "transformers", "peft", "trl", "datasets"]}
    for fam in fams:
        missing = [m for m in needs[fam] if importlib.util.find_spec(m) is None]
        if missing:
            raise BackendError(f"benchmarking the {fam} backend needs {', '.join(missing)}", where="--backend",
                               fix=f"pip install {' '.join(m.replace('_', '-') for m in missing)}, or drop --backend {fam}")


def target_list(targets) -> str | list[str]:
    """"all-linear" as is; a comma string or a sequence as a list of module names."""
    if isinstance(targets, str) and targets == "all-linear":
        return targets
    return [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)


def _datasets(tok, data: str | None, n_warm: int, n_main: int, max_length: int, ragged: bool, seed: int,
              objective: str = "sft") -> dict:
    """{name: (warm-up pool, measured pool)}: `data` (repeated to size) or uniform synthetic, plus ragged."""
    datasets = {}
    if data:
        ex = (user_pairs if objective == "dpo" else user_examples)(data, tok, max_length)
        if len(ex) < n_warm + n_main:
            ex = (ex * (-(-(n_warm + n_main) // len(ex))))
        datasets[Path(data).stem] = (ex[:n_warm], ex[n_warm: n_warm + n_main])
    else:
        ex = synth_examples(tok, n_warm + n_main, max_length, False, seed)
        datasets["uniform"] = (ex[:n_warm], ex[n_warm:])
    if ragged:
        ex = synth_examples(tok, n_warm + n_main, max_length, True, seed)
        datasets["ragged"] = (ex[:n_warm], ex[n_warm:])
    return datasets


def _plan(datasets: dict, fams: list[str], objective: str = "sft") -> list[tuple[str, str, str, str]]:
    """The runs as (dataset, runner, backend, batching): ours beside its plain library; on ragged
    data ours also with its length-aware batching. DPO: ours on each backend, TRL's DPOTrainer."""
    if objective == "dpo":
        return [(d, runner, fam, "padded") for d in datasets for fam, runners in
                (("mlx", ("ours-mlx",)), ("torch", ("ours-torch", "trl"))) if fam in fams for runner in runners]
    plan = []
    for dname in datasets:
        is_ragged = dname == "ragged"
        if "mlx" in fams:
            plan += [(dname, "ours-mlx", "mlx", "padded")]
            if is_ragged:
                plan += [(dname, "ours-mlx", "mlx", "bucketed"), (dname, "ours-mlx", "mlx", "packed")]
            # mlx-lm sorts by length before batching: on ragged data it gets the bucketed groups.
            plan += [(dname, "mlx-lm", "mlx", "bucketed" if is_ragged else "padded")]
        if "torch" in fams:
            plan += [(dname, "ours-torch", "torch", "padded")]
            if is_ragged:
                plan += [(dname, "ours-torch", "torch", "packed")]
            plan += [(dname, "trl", "torch", "padded")]
    return plan


def _header(base: dict, facts: dict, repeats: int, n_runs: int) -> str:
    """The first console line: what is measured and how many runs it takes."""
    targets = base["targets"]
    return (f"[bench] model={base['model']} ({facts['params_total']:,} params), LoRA r={base['rank']} "
            f"alpha={base['alpha']:g} on {targets if isinstance(targets, str) else ','.join(targets)} "
            f"({facts['modules']} modules, {facts['n_trainable']:,} trainable); batch {base['batch_size']}, "
            f"max length {base['max_length']}, {base['warmup']} warm-up + {base['steps']} measured steps, "
            f"{repeats} repeat(s); {n_runs} runs × {repeats}"
            + ("; objective DPO" if base.get("objective") == "dpo" else ""))


def _calibrate_all(fams: list[str], work: Path, threads, timeout: int, echo) -> dict:
    """Each family's fp32 matmul peak, measured in a worker before the runs (the MFU denominator)."""
    calib = {}
    for fam in fams:
        echo(f"[bench] measuring fp32 matmul throughput ({fam}, 2048²)...")
        calib[fam] = _launch({"runner": f"calib-{fam}", "threads": threads}, work, f"calib-{fam}", timeout, echo)
        extra = f", BLAS preloaded: {calib[fam].get('blas')}" if fam == "mlx" else ""
        echo(f"[bench]   {fam}: {calib[fam]['gflops']:.1f} GFLOP/s on {calib[fam]['device']}{extra}")
    return calib


def _specs(plan: list, datasets: dict, base: dict, work: Path) -> list[tuple[str, dict]]:
    """(name, worker spec) per run: the dataset written once to work/, the groups every run of
    that batching trains on, and each step's target count (for the pass loss)."""
    from common.training.batching import epoch_order
    bs, seed = base["batch_size"], base["seed"]
    specs = []
    for dname, runner, backend, batching in plan:
        warm, main = datasets[dname]
        data_file = work / f"data-{dname}.json"
        if not data_file.is_file():
            data_file.write_text(json.dumps({"warm": [_row_json(r) for r in warm],
                                             "main": [_row_json(r) for r in main]}))
        mode = "padded" if batching == "packed" else batching
        groups = {k: epoch_order(len(pool), bs, seed, 0, mode, [_row_length(r) for r in pool])
                  for k, pool in (("warm_groups", warm), ("main_groups", main))}
        step_targets = [sum(_row_weight(pool[i]) for i in g)
                        for pool, gs in ((warm, groups["warm_groups"]), (main, groups["main_groups"])) for g in gs]
        specs.append((f"{dname}-{runner}-{batching}",
                      dict(base, dataset=dname, step_targets=step_targets, runner=runner, backend=backend, batching=batching,
                           data_file=str(data_file), **groups)))
    return specs


def _run_repeats(specs: list, repeats: int, warmup: int, work: Path, timeout: int, echo) -> dict[str, list]:
    """Every run `repeats` times, interleaved (every run once, then again), so a change in machine
    load hits ours and the plain runs alike; one console line per run."""
    results: dict[str, list] = {name: [] for name, _ in specs}
    for rep in range(repeats):
        for name, spec in specs:
            load0 = _loadavg()
            r = _launch(spec, work, f"{name}-r{rep}", timeout, echo)
            r["loadavg"] = [load0, _loadavg()]
            results[name].append(r)
            m = r["step_s"][warmup:]
            echo(f"[bench] {name} (repeat {rep + 1}/{repeats}): {sum(r['tokens'][warmup:]) / sum(m):.1f} tok/s, "
                 f"median step {statistics.median(m):.3f} s, peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB"
                 + (f", load average {load0:.1f}" if load0 is not None else ""))
    return results


def _best_peaks(specs: list, results: dict, calib: dict) -> None:
    """The matmul peak: best of every measurement of the run (each worker measures after its run)."""
    for name, spec in specs:
        for r in results[name]:
            c, best = r.get("calibration"), calib[spec["backend"]]
            best["measurements"] = best.get("measurements", 1) + (1 if c else 0)
            if c and c["gflops"] > best["gflops"]:
                best["gflops"] = c["gflops"]


def _rows(specs: list, results: dict, warmup: int, facts: dict, calib: dict) -> list[dict]:
    """One table row per run (medians over repeats, MFU), then each of ours against its plain counterpart."""
    rows = []
    for name, spec in specs:
        s = _summ(results[name], warmup, spec["step_targets"])
        mfu = facts["flops_per_token"] * s["tok_s"] / (calib[spec["backend"]]["gflops"] * 1e9)
        rows.append(dict(data=spec["dataset"], run=spec["runner"], backend=spec["backend"],
                         batching=spec["batching"], mfu=mfu, **s))
    for r in rows:
        plain = PLAIN.get(r["run"])
        p = next((x for x in rows if x["run"] == plain and x["data"] == r["data"]), None)
        r["speed_vs_plain"] = r["tok_s"] / p["tok_s"] if p else None
        r["rss_vs_plain"] = r["rss"] / p["rss"] if p else None
    return rows


def _result(base: dict, results: dict, repeats: int, fams: list, facts: dict, calib: dict, rows: list) -> dict:
    """bench.json's content: the settings, the machine and its load, the facts and the rows."""
    loads = [x for rs in results.values() for r in rs for x in r["loadavg"] if x is not None]
    return {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in base.items()},
            "loadavg": [min(loads), max(loads)] if loads else None,
            "repeats": repeats, "backends": fams, "facts": facts, "calibration": calib, "rows": rows,
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count()},
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _write_bench(result: dict, out_dir: Path, echo) -> None:
    """bench.json and bench.md (atomic writes), the table on the console, then where they are."""
    from common.runs.io import write_text
    md = render_markdown(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "bench.json", json.dumps(result, indent=2, default=str))
    write_text(out_dir / "bench.md", md)
    echo("")
    echo(md)
    echo(f"[bench] wrote {out_dir / 'bench.md'} and {out_dir / 'bench.json'}")


def _mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:.0f}"


def _x(v) -> str:
    return "" if v is None else f"{v:.2f}×"


DPO_NOTES = ("Notes: DPO (sigmoid loss), ours on each backend and TRL's DPOTrainer with ref_model=None, on the "
             "same pairs in the same groups and order (a sequential sampler for TRL, which tokenizes the records "
             "itself, identically: tests/test_dpo.py). Every run's reference is the same base with the adapter "
             "disabled (no second model in memory); each step is one forward of the reference and one "
             "forward + backward of the policy over the chosen and rejected rows. mlx-lm has no preference "
             "tuning: ours-mlx has no plain counterpart. Peak RSS on CUDA counts host memory only: compare fw peak.")


def _data_line(c: dict) -> str:
    """What the runs trained on, for bench.md."""
    if c.get("objective") == "dpo":
        return (f"- objective: DPO, beta {c['beta']:g}, sigmoid loss, on the preference pairs of {c['data']} "
                "(repeated to size); a step's tokens are its chosen and rejected rows' (TRL's count); "
                "loss = the mean over the step's pairs")
    return ("- data: uniform = lengths uniform in [0.85·max, max]; ragged = log-uniform in "
            f"[{RAGGED_MIN}, max]; prompt 30–60 % of each example, masked out of the loss")


def _gain_lines(rows: list[dict]) -> list[str]:
    """Each of ours' length-aware batching against its padded run on the same data."""
    gains = []
    for d in sorted({r["data"] for r in rows}):
        for run, a, b in (("ours-torch", "padded", "packed"), ("ours-mlx", "padded", "bucketed"),
                          ("ours-mlx", "padded", "packed")):
            ra = next((r for r in rows if r["data"] == d and r["run"] == run and r["batching"] == a), None)
            rb = next((r for r in rows if r["data"] == d and r["run"] == run and r["batching"] == b), None)
            if ra and rb:
                gains.append(f"- {d}, {run}: {b} is {rb['tok_s'] / ra['tok_s']:.2f}× the tokens/s of {a} "
                             f"(padding {100 * ra['pad']:.0f} % → {100 * rb['pad']:.0f} %)")
    return gains


def _mlx_vs_torch(rows: list[dict]) -> list[str]:
    """Our MLX backend against our torch backend, same data and batching (median tok/s)."""
    out = []
    for r in rows:
        t = next((x for x in rows if x["run"] == "ours-torch" and x["data"] == r["data"]
                  and x["batching"] == r["batching"]), None)
        if r["run"] == "ours-mlx" and t:
            out.append(f"- {r['data']}, {r['batching']}: ours-mlx is {r['tok_s'] / t['tok_s']:.2f}× ours-torch")
    return ["", "MLX against our torch backend (same data, same batching):", *out] if out else []


def render_markdown(res: dict) -> str:
    c, f, cal = res["config"], res["facts"], res["calibration"]
    tg = c["targets"] if isinstance(c["targets"], str) else ",".join(c["targets"])
    lines = [f"# twinlora bench — {res['date']}", "",
             f"- machine: {res['machine']['platform']}, {res['machine']['cpus']} CPUs; python {res['machine']['python']}",
             f"- model: {c['model']} ({f['params_total']:,} parameters, {c['dtype']}); LoRA r={c['rank']} "
             f"alpha={c['alpha']:g} on {tg} ({f['modules']} modules, {f['n_trainable']:,} trainable); "
             f"lr {c['lr']:g} cosine, AdamW, same LoRA init in every run",
             f"- batch {c['batch_size']}, max length {c['max_length']}; {c['warmup']} warm-up steps (excluded, on "
             f"separate examples) + {c['steps']} measured steps (one pass over the same examples in every run); "
             f"median of {res['repeats']} repeat(s), each run in its own process",
             _data_line(c),
             "- trained tok/s (median over repeats; spread = the slowest–fastest repeat; the repeats run "
             "interleaved: every run once, then again, so ours and the plain runs share the same minutes) counts "
             "non-padding tokens; final loss = last step; pass loss = token-weighted (DPO: pair-weighted) mean over "
             "the measured steps (the same examples in every run); step = wall time between step ends; peak RSS via "
             "getrusage; fw peak = mx.get_peak_memory() (MLX) / torch.cuda.max_memory_allocated() (CUDA)",
             f"- MFU = ({'6' if c.get('objective') == 'dpo' else '4'}·N_frozen + 6·N_trainable) × trained tok/s ÷ "
             f"measured fp32 matmul peak; N_frozen = "
             f"{f['n_frozen']:,} (all matmul weights incl. LM head), N_trainable = {f['n_trainable']:,} → "
             f"{f['flops_per_token'] / 1e6:.1f} MFLOP per token; attention scores not counted"]
    la, ncpu = res.get("loadavg"), res["machine"]["cpus"] or 1
    if la:
        busy = (" — the machine was shared with other work, so absolute numbers are low and noisy; "
                "the interleaved ours/plain pairs are the comparison") if la[1] > 0.75 * ncpu + 1 else ""
        lines.append(f"- 1-min load average around the runs: {la[0]:.1f}–{la[1]:.1f} on {ncpu} CPUs{busy}")
    if c.get("threads"):
        lines.append(f"- threads per run: {c['threads']} (torch.set_num_threads / OPENBLAS_NUM_THREADS, same for all runs)")
    for fam, v in cal.items():
        extra = f"; OpenBLAS preloaded for every MLX run (ours and mlx-lm): {v.get('blas')}" if fam == "mlx" else ""
        lines.append(f"- measured fp32 matmul (2048²), {fam}: {v['gflops']:.1f} GFLOP/s on {v['device']} (best of "
                     f"{v.get('measurements', 1)} measurements, one after each run){extra}")
    lines += ["", "| data | run | batching | trained tok/s | vs plain | spread tok/s | median step s | peak RSS MiB "
              "| RSS vs plain | fw peak MiB | final loss | pass loss | MFU | padding |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['data']} | {r['run']} | {r['batching']} | {r['tok_s']:.1f} | {_x(r['speed_vs_plain'])} | "
                     f"{r.get('worst_tok_s', r['best_tok_s']):.1f}–{r['best_tok_s']:.1f} | {r['step_s']:.3f} | {_mib(r['rss'])} | {_x(r['rss_vs_plain'])} | "
                     f"{_mib(r['fw'])} | {r['loss']:.4f} | {r['pass_loss']:.4f} | {100 * r['mfu']:.1f} % | "
                     f"{100 * r['pad']:.0f} % |")
    gains = _gain_lines(res["rows"])
    if gains:
        lines += ["", "Batching gains on ragged data:", *gains]
    lines += _mlx_vs_torch(res["rows"])
    if c.get("objective") == "dpo":
        return "\n".join(lines + ["", DPO_NOTES]) + "\n"
    lines += ["", "Notes: mlx-lm gets the same example groups as ours but collates them itself (pads to 32·k+1, "
              "capped at max length), compiles its step (`mx.compile`, once per padded shape) and its "
              "`default_loss` counts one padding target per row; on ragged data it gets the length-bucketed "
              "groups, since mlx-lm sorts by length itself. TRL gets our groups through a sequential sampler "
              "and pads to the longest row. Where the speed differs: our loss sends only the target positions "
              "through the vocab-sized LM head (both backends); mlx-lm scores every position, TRL on CPU scores "
              "every position in chunks and recomputes them in the backward pass (on CUDA it scores targets only). "
              "Packing removes the padding from the transformer body only (the head already skips it), and on a "
              "CPU smaller matmuls run at a lower fraction of peak, so its gain grows with batch size and "
              "length spread."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # a measured run's subprocess (`cli.py bench` is the command line)
    _worker(sys.argv[2])
