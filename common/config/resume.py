"""What may change when training continues from saved weights (`--resume`, `--init-adapter`).

`--resume` compares the config the checkpoint was trained with against the new one. Changes that
alter the model or the data (base model, data files and their content, template, LoRA settings,
seed, batching, optimizer and schedule settings) are refused, all listed in one line. Changes that
do not (more steps, checkpoint/log/eval frequencies, gradient checkpointing, the run's name) are
allowed. More steps extend the run: the learning-rate schedule is recomputed for the new total
from the step where the run stopped (the steps already done keep the rates they had).

`--init-adapter` and `--resume` also check the LoRA spec (rank, alpha, rsLoRA, DoRA, targets,
layers) of the saved weights against the config on both backends: a mismatch would otherwise train
at the wrong scale or write an adapter whose config disagrees with its tensors.

A checkpoint is framework-neutral (PEFT-named weights, AdamW moments in PEFT's layout, the step), so
a run started on one backend resumes on the other (start on the Mac, finish on the GPU box):
`check_backend_switch` refuses only what cannot carry over, a quantized base (MLX's schemes and
bitsandbytes' are other weights, so the adapter would continue against another model).
On one backend, `resumed_quantize` keeps a quantized run on the scheme it was trained on (each
checkpoint records it; older ones count as what `4bit` meant then), whatever `4bit` means now.
"""
from __future__ import annotations

from common.models.quantize import SCHEMES, describe, recorded_scheme, resolved_name, schemes_of
from common.errors import AdapterError, TrainingError

# keys (section.key) that may differ between the checkpoint's config and the resumed one
RESUME_MAY_CHANGE = {
    "training.steps", "training.epochs", "training.save_every", "training.eval_every", "training.log_every",
    "training.keep_checkpoints", "training.grad_checkpointing", "training.parallel",
    "model.attn_implementation", "data.test", "output", "name",
    # which adapter is kept, when to stop, where metrics go: the weights of each step do not change
    "training.keep_best", "training.early_stopping_patience", "training.early_stopping_min_delta",
    "training.report_to",
    # compared as the scheme it resolves to (resumed_quantize): `4bit` and the scheme it names are one base
    "model.quantize",
}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(saved: dict, new: dict) -> list[str]:
    """'key: old → new' for every refused difference between two config dicts."""
    from common.config.schema import Config
    # a key added to the schema after the checkpoint was written: the checkpoint ran with its default
    a, b = {**_flat(Config().to_dict()), **_flat(saved)}, _flat(new)
    return [f"{k}: {a[k]!r} → {b[k]!r}" for k in sorted(set(a) & set(b))
            if k not in RESUME_MAY_CHANGE and a[k] != b[k]]




def check_backend_switch(ckpt, written_by: str | None, backend: str, quantize: str | None,
                         trained: str | None = None) -> None:
    """A checkpoint written by one backend resumes on the other, except on a quantized base
    (`trained`: the scheme the checkpoint records, else what `quantize` means on its backend)."""
    if not written_by or written_by == backend or not quantize:
        return
    raise TrainingError(f"this run was trained on {written_by} against a {quantize} base quantized by "
                        f"{describe(trained or quantize, written_by)}; {backend} quantizes with "
                        f"{describe(quantize, backend)}, so the adapter would continue against other "
                        "base weights", where=str(ckpt), fix=f"resume with --backend {written_by}, the backend "
                        "that wrote the checkpoint (an unquantized run resumes on either backend)")


def scheme_words(scheme: str | None) -> str:
    return f"a base quantized with {scheme}" if scheme else "the float base"


def resumed_quantize(ckpt, record: dict, written_by: str | None, backend: str, quantize: str | None) -> str | None:
    """`model.quantize` for a resumed run: the base it continues on is the one it was trained on, the
    scheme the checkpoint records (older ones: what their model.quantize meant then). `4bit` keeps
    meaning the run's own 4-bit scheme even after the default changed; another scheme, a float base
    for a quantized run or the reverse, is refused (E222)."""
    if "quantize_scheme" not in record and not record.get("config"):
        return quantize  # nothing says what the checkpoint was trained on
    saved, scheme = recorded_scheme(record, written_by or backend), resolved_name(quantize, backend)
    if saved == scheme:
        return quantize
    if quantize == "4bit" and saved in schemes_of(backend) and SCHEMES[saved].bits == 4:
        return saved
    now = f"model.quantize={quantize} means {scheme} on {backend}" if quantize else "model.quantize is unset"
    keep = f"set model.quantize: {saved}" if saved else "unset model.quantize"
    raise TrainingError(f"this run was trained on {scheme_words(saved)}, and {now}: the adapter would continue "
                        "against other base weights", where=str(ckpt),
                        fix=f"{keep} (the checkpoint's base) to resume, or start a new run with another --output")


def check_resume(ckpt, state: dict, saved_config: dict | None, new_config: dict, data_sha: dict, steps: int) -> None:
    """Refuse a resume that would continue other weights on other data; allow more steps."""
    changes = config_changes(saved_config, new_config) if saved_config else []
    for split, digest in (state.get("data_sha256") or {}).items():
        if digest and data_sha.get(split) and digest != data_sha[split]:
            changes.append(f"content of data.{split} (sha256 {digest[:12]}… → {data_sha[split][:12]}…)")
    if changes:
        raise TrainingError("--resume would change what the checkpoint was trained with: " + "; ".join(changes),
                            where=str(ckpt), fix="resume with the original settings (only steps, epochs and "
                            "save/eval/log frequencies may change), or start a new run with another --output")
    done = int(state.get("step", 0))
    if steps < done:
        raise TrainingError(f"the run has already done {done} steps; the config asks {steps}", where=str(ckpt),
                            fix=f"ask for at least {done} steps (more steps extend the run)")


SPEC_FIELDS = ("rank", "alpha", "use_rslora", "use_dora", "target_modules", "layers")


def spec_changes(saved, wanted) -> list[str]:
    """'field: saved vs config' for each LoRA setting on which two AdapterSpecs disagree."""
    def norm(spec, name):
        v = getattr(spec, name)
        if name == "target_modules":
            return sorted(v)
        if name == "layers" and v is not None and spec.num_hidden_layers and list(v) == list(range(spec.num_hidden_layers)):
            return None  # every block, spelled out
        if name == "alpha":  # mlx-lm stores scale = alpha/r (or /sqrt(r)): alpha comes back to ~1e-15
            return round(float(v), 9)
        return list(v) if isinstance(v, (list, tuple)) else v
    return [f"{n}: adapter {norm(saved, n)!r} vs config {norm(wanted, n)!r}"
            for n in SPEC_FIELDS if norm(saved, n) != norm(wanted, n)]


def check_init_adapter(saved, wanted, where: str) -> None:
    diff = spec_changes(saved, wanted)
    if diff:
        raise AdapterError("--init-adapter's LoRA settings differ from the config: " + "; ".join(diff),
                           where=where, fix="set the lora.* keys to the adapter's values (see its "
                           "adapter_config.json), or train without --init-adapter")
