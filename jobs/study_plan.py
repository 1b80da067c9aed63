"""What a decision study will do, checked before any model is loaded: the settings (a rerun
must finish the same study, not mix two), the systems it compares and where each one's outputs
live. jobs/study.py runs the stages; jobs/study_report.py reads their outputs back through the
same Plan."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from common.evaluation.bootstrap import N_BOOT
from common.errors import ConfigError
from common.runs.io import read_json
from jobs.defaults import MAX_NEW_TOKENS

STUDY = "study.json"
SETTINGS = "settings.json"
STAGE_TIMES = "stage-times.json"  # wall and CPU seconds per stage, summed over reruns
BASELINE = "baseline"


def order_backends(backends: Sequence[str]) -> list[str]:
    """Canonical names, torch first (see the module docstring), each once."""
    from backends import canonical
    names = list(dict.fromkeys(canonical(b) for b in backends))
    return sorted(names, key=lambda b: b == "mlx")


# ------------------------------------------------------------------ plan
@dataclass
class Plan:
    cfg: Any
    out: Path
    backends: list[str]
    metrics: list[str]
    curve_every: int
    curve_items: int
    test_items: int | None
    max_new_tokens: int
    n_boot: int
    seed: int
    shots: list[int] = field(default_factory=list)        # k > 0: one k-shot baseline each
    ranks: list[int] = field(default_factory=list)        # LoRA ranks trained beside the config's
    forgetting: bool = False
    variability_items: int = 0
    variability_samples: int = 4
    temperature: float = 0.7
    failure_threshold: float = 50.0                       # points of the headline score

    def settings(self) -> dict:
        from common.config.schema import dump_yaml
        import yaml
        return {"config": yaml.safe_load(dump_yaml(self.cfg)), "backends": self.backends, "metrics": self.metrics,
                "curve_every": self.curve_every, "curve_items": self.curve_items, "test_items": self.test_items,
                "max_new_tokens": self.max_new_tokens, "shots": self.shots, "ranks": self.ranks,
                "forgetting": self.forgetting, "variability_items": self.variability_items,
                "variability_samples": self.variability_samples, "temperature": self.temperature}

    @property
    def first(self) -> str:
        """The backend that scores the base model and trains the other ranks."""
        return self.backends[0]

    def tuned(self) -> dict[str, Path]:
        """Every tuned system: name → its training run directory."""
        runs = {f"{b}-tuned": self.out / b / "run" for b in self.backends}
        runs.update({rank_system(self.first, r): self.out / self.first / f"rank-{r}" / "run" for r in self.ranks})
        return runs

    def test_dir(self, system: str) -> Path:
        if system == BASELINE:
            return self.out / BASELINE / "test"
        if system.startswith("base-"):
            return self.out / system / "test"
        return self.tuned()[system].parent / "test"

    def systems(self) -> list[str]:
        """Every system scored on the test split, in report order."""
        return [BASELINE, *(shot_system(k) for k in self.shots), *self.tuned()]


def shot_system(k: int) -> str:
    return f"base-{k}shot"


def rank_system(backend: str, rank: int) -> str:
    return f"{backend}-r{rank}"


def _int_list(values: Sequence[int] | None, where: str, lo: int, hi: int | None = None) -> list[int]:
    out = sorted(set(int(v) for v in values or ()))
    bad = [v for v in out if v < lo or (hi is not None and v > hi)]
    if bad:
        raise ConfigError(f"{where} value(s) {', '.join(map(str, bad))} out of range", where=where,
                          fix=f"give whole numbers from {lo}" + (f" to {hi}" if hi is not None else " up"))
    return out


def plan_study(config_path, sets: Sequence[str], backends: Sequence[str], out_dir, *, metrics=None,
               curve_every: int | None = None, curve_items: int = 20, test_items: int | None = None,
               max_new_tokens: int = MAX_NEW_TOKENS["study"], n_boot: int = N_BOOT, seed: int = 0,
               shots: Sequence[int] = (), ranks: Sequence[int] = (), forgetting: bool = True, variability_items: int = 8,
               variability_samples: int = 4, temperature: float = 0.7, failure_threshold: float = 50.0) -> Plan:
    """Check everything a study needs before any model is loaded; refuse a directory made with
    other settings (a rerun must finish the same study, not mix two)."""
    from common.data.formats import load_examples
    from common.evaluation.registry import METRICS, default_metrics, study_headlines, unknown_metrics

    out = Path(out_dir)
    cfg = _study_config(config_path, sets)
    every = curve_every or (cfg.training.save_every if 0 < cfg.training.save_every < cfg.training.steps
                            else max(1, cfg.training.steps // 3))
    if every < 1 or every > cfg.training.steps:
        raise ConfigError(f"--curve-every {every} is outside 1..training.steps ({cfg.training.steps})",
                          where="--curve-every", fix="pick a step interval within the training budget")
    if metrics:
        unknown = unknown_metrics(metrics)
        if unknown:
            raise ConfigError(f"unknown metric(s): {', '.join(unknown)}", where="--metrics",
                              fix=f"choose among {', '.join(METRICS)}")
    test = load_examples(cfg.data.test)
    metrics = list(metrics) if metrics else default_metrics(test, job="study")
    if not study_headlines(metrics):
        raise ConfigError(f"none of the metrics {', '.join(metrics)} has a per-item score to bootstrap",
                          where="--metrics", fix="include squad, rouge, classification or citations")
    shots = [k for k in _int_list(shots, "--shots", 0, 64) if k > 0]
    if shots:  # the shots are drawn now, so a split too small is refused before any work
        from common.evaluation.fewshot import pick_shots
        pick_shots(load_examples(cfg.data.train), max(shots), seed, test)
    ranks = [r for r in _int_list(ranks, "--ranks", 1, 4096) if r != cfg.lora.rank]
    if variability_items and not 0 < temperature <= 2:
        raise ConfigError(f"--temperature {temperature} cannot sample varied answers", where="--temperature",
                          fix="use a temperature in (0, 2], e.g. 0.7")
    if forgetting:
        from common.evaluation.forgetting import load_general
        load_general()  # the shipped material is checked before training
    # every checkpoint is kept: the learning curve scores each of them
    cfg.training.save_every, cfg.training.eval_every, cfg.training.keep_checkpoints = every, every, 0
    plan = Plan(cfg, out, order_backends(backends), metrics, every, curve_items, test_items, max_new_tokens,
                n_boot, seed, shots, ranks, forgetting, variability_items, variability_samples, temperature,
                failure_threshold)
    _refuse_other_settings(plan, out)
    return plan


def _study_config(config_path, sets: Sequence[str]):
    """The study's config with its data resolved; refuses what a study cannot run without."""
    from common.config.schema import load_config, parse_set
    from common.data.manifest import resolve_data
    cfg = load_config(config_path, parse_set(list(sets)))
    cfg.data.train, cfg.data.valid = resolve_data(cfg.data.train, cfg.data.valid)
    if not cfg.data.test or not Path(cfg.data.test).is_file():
        raise ConfigError(f"a study needs a held-out test split (data.test is {cfg.data.test!r})", where="data.test",
                          fix="set data.test to a prepared test.jsonl (e.g. --set data.test=data/prepared/x/test.jsonl)")
    if not cfg.data.valid:
        raise ConfigError("a study needs a validation split for its learning curves", where="data.valid",
                          fix="set data.valid to a prepared valid.jsonl")
    if not cfg.training.steps:
        raise ConfigError("a study trains for a fixed budget of steps", where="training.steps",
                          fix="set training.steps (e.g. --set training.steps=60)")
    return cfg


def _refuse_other_settings(plan: Plan, out: Path) -> None:
    """A rerun must finish the same study, not mix two: a directory made with other settings is refused."""
    saved = out / SETTINGS
    if saved.is_file():
        before = read_json(saved, SETTINGS)
        now = json.loads(json.dumps(plan.settings()))
        now["config"] = _as_recorded(now["config"], before.get("config") or {}, _default_config())
        diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if diff:
            raise ConfigError(f"this study directory was made with other settings (differs in {', '.join(diff)})",
                              where=str(out), fix="use another --output, or delete that study directory to redo it")


def _default_config() -> dict:
    import yaml
    from common.config.schema import Config, dump_yaml
    return yaml.safe_load(dump_yaml(Config()))


def _as_recorded(now: dict, before: dict, defaults: dict) -> dict:
    """`now` without the keys a newer twinlora added since `before` was recorded, where they hold
    their default (the study is the same one; an upgrade must not make it unresumable)."""
    out = {}
    for key, value in now.items():
        if key not in before:
            if value == defaults.get(key):
                continue
            out[key] = value
        elif isinstance(value, dict) and isinstance(before[key], dict):
            out[key] = _as_recorded(value, before[key], defaults.get(key) or {})
        else:
            out[key] = value
    return out
