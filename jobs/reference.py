"""The training objective of a run (training.objective, common/training/objectives.py) set on its backend,
and what a DPO run's reference is: the base with the adapter disabled, or the --init-adapter
kept frozen. Its checkpoints record which, so a resume cannot silently switch references.
"""
from __future__ import annotations

from pathlib import Path

from backends.base import Backend
from common.adapters.format import AdapterSpec
from common.errors import TrainingError
from common.training.objectives import objective_from_config
from jobs.train_setup import TrainingPlan


def set_objective(plan: TrainingPlan, be: Backend, spec: AdapterSpec, modules: dict, starting: dict) -> None:
    """The loss from the objective table (training.objective). DPO's reference is the base with the
    adapter disabled, or, continuing from --init-adapter (SFT → DPO), that starting adapter kept
    frozen beside the trained one (TRL's "ref" adapter): one base in memory either way."""
    objective = objective_from_config(plan.cfg.training)
    reference = None
    if objective.needs_reference and plan.init_adapter:
        be.add_adapter("reference", spec, modules, starting)
        be.set_active_adapter("default")   # the trained adapter stays the active, trainable one
        reference = "reference"
    be.set_objective(objective, reference)


def reference_of(plan: TrainingPlan) -> str | None:
    """What a DPO run's reference is, as its checkpoints record it: "base", or the starting adapter's
    weights hash (--init-adapter); None for an objective without a reference."""
    if not objective_from_config(plan.cfg.training).needs_reference:
        return None
    if not plan.init_adapter:
        return "base"
    from common.runs.io import sha256_file
    files = [f for f in (Path(plan.init_adapter) / n for n in ("adapter_model.safetensors", "adapters.safetensors"))
             if f.is_file()]
    return "adapter sha256 " + (sha256_file(files[0]) if files else str(Path(plan.init_adapter).resolve()))


def check_reference(plan: TrainingPlan, state: dict, ckpt: Path) -> None:
    """A resumed DPO run keeps its reference: the same --init-adapter, or none."""
    saved, now = state.get("reference"), reference_of(plan)
    if saved is not None and now is not None and saved != now:
        said = {"base": "the base with the adapter disabled"}
        raise TrainingError(f"this DPO run's reference is {said.get(saved, 'its --init-adapter (' + saved[:22] + '…)')}, "
                            f"and this resume's would be {said.get(now, 'another adapter')}", where=str(ckpt),
                            fix="resume with the run's own --init-adapter (or without one, if it had none)")
