"""Other tools' config names → ours, for "did you mean" in the unknown-key error.

People arrive with configs written for mlx-lm (`iters`, `lora_parameters.scale`), TRL /
transformers (`learning_rate`, `num_train_epochs`, `per_device_train_batch_size`) or Axolotl
(`lora_r`, `sequence_len`, `micro_batch_size`). An explicit table catches the names that look
nothing like ours; difflib catches typos (`lora.rnak`). Suggestions only: a key is never renamed
silently, so a config means the same thing everywhere.
"""
from __future__ import annotations

import difflib

# name as written (leaf, any section) → (our key, note or ""). Notes explain what is not a rename.
ALIASES: dict[str, tuple[str, str]] = {
    # LoRA (PEFT LoraConfig, TRL ModelConfig, Axolotl, mlx-lm)
    "r": ("lora.rank", ""), "lora_r": ("lora.rank", ""), "lora_rank": ("lora.rank", ""),
    "lora_alpha": ("lora.alpha", ""), "lora_dropout": ("lora.dropout", ""),
    "lora_target_modules": ("lora.target_modules", ""), "keys": ("lora.target_modules", ""),
    "lora_target_linear": ("lora.target_modules", 'write target_modules: all-linear'),
    "num_layers": ("lora.layers", ""), "lora_layers": ("lora.layers", ""),
    "layers_to_transform": ("lora.layers", "lora.layers adapts the last N blocks"),
    "lora_parameters": ("", "mlx-lm's lora_parameters {rank, scale, dropout, keys} are "
                        "lora.rank, lora.scale (alpha = scale × rank), lora.dropout, lora.target_modules"),
    "lora_scale": ("lora.scale", "alpha = scale × rank"),
    "fine_tune_type": ("lora.use_dora", "mlx-lm's fine_tune_type: dora is lora.use_dora: true"),
    "peft_use_dora": ("lora.use_dora", ""), "peft_use_rslora": ("lora.use_rslora", ""),
    # model
    "model_name_or_path": ("model.path", ""), "base_model": ("model.path", ""),
    "torch_dtype": ("model.dtype", ""), "load_in_4bit": ("model.quantize", "write quantize: 4bit"),
    "attn_implementation": ("model.attn_implementation", ""),
    # objective (TRL DPOConfig)
    "loss_type": ("training.dpo_loss", "TRL's loss_type: sigmoid or ipo (with training.objective: dpo)"),
    "rl_type": ("training.objective", "write objective: dpo"), "rlhf_type": ("training.objective", "write objective: dpo"),
    # data
    "max_seq_length": ("data.max_length", ""), "max_seq_len": ("data.max_length", ""),
    "sequence_len": ("data.max_length", ""), "max_length": ("data.max_length", ""),
    "train_file": ("data.train", ""), "dataset": ("data.train", ""), "datasets": ("data.train", ""),
    "train_data": ("data.train", ""), "validation_file": ("data.valid", ""), "val_file": ("data.valid", ""),
    "eval_dataset": ("data.valid", ""), "test_file": ("data.test", ""),
    "chat_template": ("data.template", ""), "system_message": ("data.system_prompt", ""),
    "train_on_inputs": ("data.mask_prompt", "Axolotl's train_on_inputs: false is mask_prompt: true"),
    "completion_only_loss": ("data.mask_prompt", ""),
    "assistant_only_loss": ("data.train_on", "TRL's assistant_only_loss: true is train_on: all_assistant"),
    "roles_to_train": ("data.train_on", "roles_to_train: [assistant] is train_on: all_assistant"),
    "train_on_eos": ("data.train_on", ""),
    # training (transformers TrainingArguments / TRL SFTConfig / mlx-lm / Axolotl)
    "iters": ("training.steps", ""), "max_steps": ("training.steps", ""),
    "num_train_epochs": ("training.epochs", ""), "num_epochs": ("training.epochs", ""),
    "learning_rate": ("training.lr", ""),
    "per_device_train_batch_size": ("training.batch_size", ""), "micro_batch_size": ("training.batch_size", ""),
    "train_batch_size": ("training.batch_size", ""),
    "gradient_accumulation_steps": ("training.grad_accumulation", ""),
    "gradient_accumulation": ("training.grad_accumulation", ""),
    "lr_scheduler_type": ("training.schedule", ""), "lr_scheduler": ("training.schedule", ""),
    "lr_schedule": ("training.schedule", ""), "warmup": ("training.warmup_steps", ""),
    "gradient_checkpointing": ("training.grad_checkpointing", ""),
    "grad_checkpoint": ("training.grad_checkpointing", ""),
    "save_steps": ("training.save_every", ""), "steps_per_save": ("training.save_every", ""),
    "eval_steps": ("training.eval_every", ""), "steps_per_eval": ("training.eval_every", ""),
    "logging_steps": ("training.log_every", ""), "steps_per_report": ("training.log_every", ""),
    "save_total_limit": ("training.keep_checkpoints", ""),
    "load_best_model_at_end": ("training.keep_best", "the best adapter is kept in adapter-best/"),
    "early_stopping_threshold": ("training.early_stopping_min_delta", ""),
    "optim": ("training.optimizer", ""), "grad_clip": ("training.max_grad_norm", ""),
    "adam_beta1": ("training.adam_betas", "write adam_betas: [beta1, beta2]"),
    "adam_beta2": ("training.adam_betas", "write adam_betas: [beta1, beta2]"),
    "adam_epsilon": ("training.adam_eps", ""), "ddp": ("training.parallel", ""), "fsdp": ("training.parallel", ""),
    "packing": ("training.batching", "write batching: packed"),
    "sample_packing": ("training.batching", "write batching: packed"),
    # output
    "output_dir": ("output", ""), "adapter_path": ("output", "the adapter goes to <output>/adapter"),
    "run_name": ("name", ""),
    # flags of other tools with no key here
    "train": ("", "mlx-lm's train: true has no key here; `cli.py train` always trains"),
    "test": ("data.test", "mlx-lm's test: true has no key here; run `cli.py eval`"),
    "bf16": ("model.dtype", "write dtype: bfloat16"), "fp16": ("model.dtype", "write dtype: float16"),
}


def our_keys(sections: dict, top_level: tuple) -> list[str]:
    """Every key of the schema as "section.name" (and the top-level names)."""
    from dataclasses import fields
    return [f"{s}.{f.name}" for s, cls in sections.items() for f in fields(cls)] + list(top_level)


def suggest(path: str, sections: dict, top_level: tuple) -> str:
    """A "did you mean" phrase for an unknown key `path` ("lora_r", "training.learning_rate"), or ""."""
    leaf = path.rsplit(".", 1)[-1]
    keys = our_keys(sections, top_level)
    if leaf in ALIASES:
        target, note = ALIASES[leaf]
        if not target:
            return f" ({note})"
        return f", did you mean {target}?" + (f" ({note})" if note else "")
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in keys}
    if leaf in by_leaf:  # our name, in the wrong section
        return f", did you mean {by_leaf[leaf]}?"
    section = path.rsplit(".", 1)[0] if "." in path else None
    same = [k.rsplit(".", 1)[-1] for k in keys if section and k.startswith(section + ".")]
    close = [f"{section}.{m}" for m in difflib.get_close_matches(leaf, same, n=1, cutoff=0.75)] \
        or [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)] \
        or [ALIASES[m][0] for m in difflib.get_close_matches(leaf, list(ALIASES), n=1, cutoff=0.85)
            if ALIASES[m][0]]
    return f", did you mean {close[0]}?" if close else ""
