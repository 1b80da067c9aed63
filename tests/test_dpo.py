"""DPO (training.objective: dpo) is TRL's computation, the same on both backends.

- tokenization and completion masks equal TRL DPOTrainer's preprocessing (text, chat with a
  multi-turn prompt, implicit prompt), and our batch equals its collator's;
- on that batch, from the same LoRA weights, our torch loss and every logged metric equal
  DPOTrainer.compute_loss's within 1e-5 (fp32), for the sigmoid and the IPO loss;
- MLX equals torch within 1e-4 over 10 training steps from the same init and batches;
- the reference log-probs are the base model's (adapter disabled), or the frozen --init-adapter;
- a DPO run interrupted and resumed ends bit-exact with the uninterrupted one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import chat_pairs, tiny_config, write_jsonl

BACKENDS = ("mlx", "torch")


def quiet(*a, **k):
    pass


def text_pairs(n: int = 6) -> list[dict]:
    return [{"prompt": f"Question {i}: who ruled the duchy?", "chosen": f" The duke ruled it ({i}).",
             "rejected": " unanswerable"} for i in range(n)]


def implicit_pairs(n: int = 4) -> list[dict]:
    return [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in chat_pairs(n)]


def random_lora(spec, modules, seed: int = 3) -> dict:
    """PEFT-named weights with B ≠ 0, so the adapted model differs from the base from the start."""
    from common.adapters.format import init_lora_weights
    w = init_lora_weights(spec, modules, seed)
    rng = np.random.default_rng(seed)
    return {k: (rng.normal(0, 0.05, v.shape).astype(np.float32) if "lora_B" in k else v) for k, v in w.items()}


def _spec(be, tiny_model):
    from common.adapters.format import spec_from_config
    from common.config.schema import LoraConfig
    return spec_from_config(LoraConfig(target_modules="all-linear"), be.linear_modules(), be.num_hidden_layers(),
                            str(tiny_model))


def _ours(tokenizer, rows, max_length=128):
    from common.data.pairs import to_pair
    from common.training.pairs import PairTokenizer
    return PairTokenizer(tokenizer, max_length=max_length).encode_all([to_pair(r, f"row {i}") for i, r in enumerate(rows)])


# ---------------------------------------------------------------- TRL equivalence

@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from common.training.tokenize import load_tokenizer
    return load_tokenizer(tiny_model)


def trl_trainer(tiny_model, out: Path, starting: dict, reference: str):
    """TRL's DPOTrainer over the tiny base with a PEFT adapter holding `starting`: TRL copies a
    given adapter into a frozen "ref" adapter (our --init-adapter reference); with reference="base"
    that copy is deleted, and TRL disables the adapter for the reference (ref_model=None)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from common.training.tokenize import load_tokenizer
    modules = sorted({k.split("base_model.model.")[1].rsplit(".lora_", 1)[0] for k in starting})
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=modules,
                                            task_type="CAUSAL_LM"))
    set_peft_model_state_dict(peft, {k: torch.from_numpy(v) for k, v in starting.items()})
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=4, beta=0.1, max_length=128, report_to="none",
                     use_cpu=True, logging_steps=1, save_strategy="no")
    trainer = DPOTrainer(model=peft, ref_model=None, args=args, train_dataset=Dataset.from_list(chat_pairs()),
                         processing_class=load_tokenizer(tiny_model))
    assert "ref" in trainer.model.peft_config
    if reference == "base":
        trainer.model.delete_adapter("ref")
    return trainer


def _trl_rows(trainer, rows):
    from datasets import Dataset
    return trainer._prepare_dataset(Dataset.from_list(rows), trainer.processing_class, trainer.args, "test")


@pytest.mark.parametrize("shape", ["chat", "text", "implicit"])
def test_tokenization_and_masks_equal_trl(tiny_model, tokenizer, tmp_path, shape):
    from backends import get_backend
    be = get_backend("torch")(tiny_model)
    spec, modules = _spec(be, tiny_model)
    trainer = trl_trainer(tiny_model, tmp_path, random_lora(spec, modules), "base")
    tok = tokenizer
    rows = {"chat": chat_pairs, "text": text_pairs, "implicit": implicit_pairs}[shape]()
    theirs, ours = _trl_rows(trainer, rows), _ours(tok, rows)
    assert len(ours) == len(rows)
    for t, o in zip(theirs, ours):
        n = len(t["prompt_ids"])
        assert list(o.chosen.ids) == t["prompt_ids"] + t["chosen_ids"]
        assert list(o.rejected.ids) == t["prompt_ids"] + t["rejected_ids"]
        # prompt tokens are never counted; every completion token is
        assert o.chosen.mask == (0,) * n + (1,) * len(t["chosen_ids"])
        assert o.rejected.mask == (0,) * n + (1,) * len(t["rejected_ids"])
    if shape == "chat":   # the multi-turn prompt's earlier assistant turn is prompt, not completion
        first = ours[0].chosen
        completion = tok.decode([i for i, m in zip(first.ids, first.mask) if m])
        assert "Bonjour !" not in completion and completion.startswith("L'article L100-1")


@pytest.mark.parametrize("reference", ["base", "init_adapter"])
@pytest.mark.parametrize("kind", ["sigmoid", "ipo"])
def test_torch_loss_and_rewards_equal_trl(tiny_model, tokenizer, tmp_path, kind, reference):
    """The same batch through TRL's compute_loss and our accumulate, the adapter at W1 and the
    reference the adapter-disabled base or a frozen starting adapter W0: every number within 1e-5."""
    import torch
    from peft import set_peft_model_state_dict

    from backends import get_backend
    from common.training.batching import collate_pairs
    from common.training.objectives import DPO, DPO_METRICS
    be = get_backend("torch")(tiny_model)
    spec, modules = _spec(be, tiny_model)
    w0, w1 = random_lora(spec, modules, 3), random_lora(spec, modules, 4)
    trainer = trl_trainer(tiny_model, tmp_path, w0, reference)
    set_peft_model_state_dict(trainer.model, {k: torch.from_numpy(v) for k, v in w1.items()}, adapter_name="default")
    trainer.loss_types = [kind]
    be.attach_lora(spec, modules, w1)
    if reference == "init_adapter":
        be.add_adapter("reference", spec, modules, w0)
        be.set_active_adapter("default")
    be.set_objective(DPO(0.1, kind), "reference" if reference == "init_adapter" else None)

    inputs = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    batch = collate_pairs(_ours(tokenizer, chat_pairs())[:4], tokenizer.pad_token_id)
    assert np.array_equal(batch.ids, inputs["input_ids"].numpy())
    assert np.array_equal(batch.mask, inputs["completion_mask"].numpy())
    trainer.model.train()
    theirs = float(trainer.compute_loss(trainer.model, inputs).detach())
    logged = {k: trainer._metrics["train"][k][-1] for k in DPO_METRICS}
    loss_sum, pairs = be.accumulate(batch)
    ours = {k: v / pairs for k, v in be.objective_sums.items()}
    print(f"\n[dpo {kind}, reference {reference}] TRL loss {theirs:.8f} ours {loss_sum / pairs:.8f}; max |Δ| "
          f"{max(abs(ours[k] - logged[k]) for k in DPO_METRICS):.2e} over " + ", ".join(DPO_METRICS))
    assert pairs == 4 and abs(loss_sum / pairs - theirs) < 1e-5
    assert abs(logged["rewards/margins"]) > 1e-3, "the adapter must differ from the reference, or the check is vacuous"
    for k in DPO_METRICS:
        assert abs(ours[k] - logged[k]) < 1e-5, (k, ours[k], logged[k])


# ---------------------------------------------------------------- reference

@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_logps_are_the_base_models(tiny_model, backend):
    """Adapter disabled = the base alone (computed here from a backend without any adapter, through
    its logits); with a reference adapter set, the frozen adapter's own log-probs."""
    from backends import get_backend
    from common.training.batching import collate_pairs
    from common.training.objectives import DPO
    from common.training.tokenize import load_tokenizer
    tok = load_tokenizer(tiny_model)
    batch = collate_pairs(_ours(tok, chat_pairs(3)), tok.pad_token_id)

    def logps_from_logits(be):
        logits = be.logits(batch.ids[:, :-1]).astype(np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        picked = np.take_along_axis(logp, batch.ids[:, 1:, None].astype(np.int64), -1)[..., 0]
        return (picked * batch.mask[:, 1:]).sum(1)

    cls = get_backend(backend)
    base = logps_from_logits(cls(tiny_model))
    be = cls(tiny_model)
    spec, modules = _spec(be, tiny_model)
    trained, frozen = random_lora(spec, modules, 3), random_lora(spec, modules, 4)
    be.attach_lora(spec, modules, trained)
    be.set_objective(DPO())
    ref = be.reference_logps(batch)
    adapted = logps_from_logits(be)
    print(f"\n[reference {backend}] max |ref - base| = {np.abs(ref - base).max():.2e}, "
          f"|adapted - base| = {np.abs(adapted - base).max():.3f}")
    assert np.abs(ref - base).max() < 1e-4
    assert np.abs(adapted - base).max() > 1e-2     # not vacuous: the adapter moves the log-probs
    be.add_adapter("reference", spec, modules, frozen)
    be.set_active_adapter("default")
    be.set_objective(DPO(), "reference")
    ref2 = be.reference_logps(batch)
    only = cls(tiny_model)
    only.attach_lora(spec, modules, frozen)
    assert np.abs(ref2 - logps_from_logits(only)).max() < 1e-4
    assert np.abs(logps_from_logits(be) - adapted).max() < 1e-6   # the trained adapter is active again


# ---------------------------------------------------------------- MLX = torch, resume

@pytest.fixture(scope="module")
def dpo_runs(tiny_model, tmp_path_factory):
    """10 DPO steps per backend from the same config (same init, same batches)."""
    from jobs.trainer import train
    root = tmp_path_factory.mktemp("dpo_runs")
    data = write_jsonl(root / "pairs.jsonl", chat_pairs(8))
    runs = {}
    for b in BACKENDS:
        cfg = tiny_config(tiny_model, data, root / b, training={"steps": 10, "objective": "dpo", "lr": 5e-3,
                                                                 "save_every": 0})
        train(cfg, b, echo=quiet)
        runs[b] = root / b
    return data, runs


def _train_log(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r.get("event") == "train"]


def test_mlx_equals_torch_over_10_steps(dpo_runs):
    from common.training.objectives import DPO_METRICS
    _, runs = dpo_runs
    a, b = _train_log(runs["mlx"]), _train_log(runs["torch"])
    assert len(a) == len(b) == 10
    worst = {k: max(abs(x[k] - y[k]) for x, y in zip(a, b)) for k in ("loss", *DPO_METRICS)}
    print("\n[dpo mlx vs torch, 10 steps] max |Δ| " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert worst[k] < 1e-4, (k, worst[k])
    assert b[-1]["loss"] < b[0]["loss"] - 0.1 and b[-1]["rewards/accuracies"] == 1.0  # it learned


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_mid_dpo_is_bit_exact(tiny_model, dpo_runs, backend, tmp_path, monkeypatch):
    """Ctrl-C in step 6 saves step 5; --resume ends with the uninterrupted run's adapter, bit for bit."""
    from safetensors.numpy import load_file

    from backends import get_backend
    from common.errors import TrainingError
    from jobs.trainer import train
    data, runs = dpo_runs
    cls = get_backend(backend)
    orig, calls = cls.accumulate, {"n": 0}

    def interrupt_in_step_6(self, batch, sync=True):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return orig(self, batch, sync)

    def cfg():
        return tiny_config(tiny_model, data, tmp_path / "run", training={"steps": 10, "objective": "dpo", "lr": 5e-3,
                                                                          "save_every": 0})
    monkeypatch.setattr(cls, "accumulate", interrupt_in_step_6)
    with pytest.raises(TrainingError, match="progress saved at step 5"):
        train(cfg(), backend, echo=quiet)
    monkeypatch.setattr(cls, "accumulate", orig)
    train(cfg(), backend, resume=True, echo=quiet)
    a = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(runs[backend] / "adapter" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert [r["rewards/margins"] for r in _train_log(tmp_path / "run")] == \
        [r["rewards/margins"] for r in _train_log(runs[backend])]


@pytest.mark.parametrize("backend", BACKENDS)
def test_qlora_dpo_tracks_the_float_run(tiny_model, dpo_runs, backend, tmp_path):
    """QLoRA DPO (each backend's own `4bit` base: bitsandbytes NF4, mlx-nvfp4) against that backend's
    float run, as `parity --quantize` compares: the same curve within the quantization error."""
    from jobs.trainer import train
    data, runs = dpo_runs
    from common.config.schema import load_config
    cfg = tiny_config(tiny_model, data, tmp_path / "q", training={"steps": 10, "objective": "dpo", "lr": 5e-3,
                                                                   "save_every": 0})
    train(load_config(overrides={**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "quantize": "4bit"}}), backend,
          echo=quiet)
    q, f = _train_log(tmp_path / "q"), _train_log(runs[backend])
    worst = max(abs(a["loss"] - b["loss"]) for a, b in zip(q, f))
    print(f"\n[qlora dpo {backend}] max |Δ loss| vs float over 10 steps {worst:.4f}; final margins "
          f"{q[-1]['rewards/margins']:.3f} (4-bit) vs {f[-1]['rewards/margins']:.3f} (float)")
    assert worst < 0.05 and q[-1]["rewards/accuracies"] == 1.0


def test_prepare_pairs_from_an_sft_split(tiny_model, tmp_path):
    """`prepare pairs`: chosen = the reference, rejected = the model's greedy answer; an item the
    model already answers exactly is skipped; the output trains a DPO run through its manifest."""
    from common.data.formats import to_example
    from helpers import chat_rows, run_cli
    from jobs.pairs import pair_rows
    exs = [to_example(r, f"r{i}") for i, r in enumerate(chat_rows(2))]
    rows, skipped = pair_rows(exs, [exs[0].completion + "  ", "autre chose"])
    assert skipped == 1 and rows == [{"prompt": [dict(m) for m in exs[1].messages[:-1]],
                                      "chosen": [{"role": "assistant", "content": exs[1].completion}],
                                      "rejected": [{"role": "assistant", "content": "autre chose"}]}]
    sft = write_jsonl(tmp_path / "sft.jsonl", chat_rows(4))
    r = run_cli("prepare", "pairs", sft, "--out", tmp_path / "pairs", "--option", f"model={tiny_model}",
                "--option", "max_new_tokens=6")
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "pairs" / "manifest.json").read_text())
    assert manifest["counts"]["train"] == 4 and manifest["pairs"]["answered_by"] == "base"
    r = run_cli("train", "--backend", "torch", "--model", tiny_model, "--data", tmp_path / "pairs" / "manifest.json",
                "--output", tmp_path / "run", "--steps", "2", "--set", "training.objective=dpo")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["objective"] == "dpo"


def test_parity_runs_compares_dpo_rewards(dpo_runs):
    """`parity --runs` (jobs.parity.loss_curve_gap) reports the reward gaps of two DPO runs too."""
    from common.runs.run_dir import RunDir
    from jobs.parity import loss_curve_gap
    _, runs = dpo_runs
    gap = loss_curve_gap(RunDir(runs["mlx"]).read_log(), RunDir(runs["torch"]).read_log())
    assert gap["steps"] == 10 and gap["max_abs_loss_gap"] < 1e-4
    assert gap["max_abs_gap/rewards/margins"] < 1e-4 and gap["max_abs_gap/rewards/accuracies"] == 0


def test_two_processes_match_one_under_dpo(tiny_model, dpo_runs, tmp_path):
    """`train --nproc 2` (torch DDP, gloo): each rank scores its micro-batch of pairs against the
    reference; losses, pairs and reward sums are summed over the ranks: the run equals one process."""
    import os
    import subprocess
    import sys

    from common.config.schema import dump_yaml
    from conftest import ROOT
    from safetensors.numpy import load_file
    from jobs.trainer import train
    data, _ = dpo_runs
    cfg = tiny_config(tiny_model, data, tmp_path / "one", training={"steps": 3, "objective": "dpo", "lr": 5e-3,
                                                                     "grad_accumulation": 2, "batch_size": 1,
                                                                     "save_every": 0})
    (tmp_path / "c.yaml").write_text(dump_yaml(cfg))
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--config", str(tmp_path / "c.yaml"), "--backend",
                        "torch", "--output", str(tmp_path / "two"), "--nproc", "2"], cwd=str(tmp_path), text=True,
                       capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert r.returncode == 0 and "data parallel: 2 processes" in r.stdout, r.stdout + r.stderr
    train(cfg, "torch", echo=quiet)
    a, b = (load_file(str(tmp_path / d / "adapter" / "adapter_model.safetensors")) for d in ("one", "two"))
    gap = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    l1, l2 = _train_log(tmp_path / "one"), _train_log(tmp_path / "two")
    worst = max(abs(x[k] - y[k]) for x, y in zip(l1, l2) for k in ("loss", "rewards/margins", "rewards/accuracies"))
    print(f"\n[dpo --nproc 2] max |Δweight| {gap:.2e}, max |Δ loss/rewards| {worst:.2e}")
    assert [x["targets"] for x in l2] == [2, 2, 2] and gap < 1e-5 and worst < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_equal_to_the_adapter_gives_zero_rewards_on_long_pairs(tiny_model, tokenizer, backend):
    """SFT → DPO starts with the trained adapter equal to its reference: every reward must be exactly
    0 (accuracy 0), also for rows past the MLX chunked-attention threshold (256 tokens), where the
    reference pass must take the policy pass's attention path."""
    from backends import get_backend
    from common.training.batching import collate_pairs
    from common.training.objectives import DPO
    long = " ".join(["Le salarié a droit à un congé payé."] * 16)
    rows = [{"prompt": f"Question {i}: {long}", "chosen": " oui.", "rejected": " non."} for i in range(2)]
    batch = collate_pairs(_ours(tokenizer, rows, max_length=512), tokenizer.pad_token_id)
    assert batch.ids.shape[1] > 300
    be = get_backend(backend)(tiny_model)
    spec, modules = _spec(be, tiny_model)
    w = random_lora(spec, modules)
    be.attach_lora(spec, modules, w)
    be.add_adapter("reference", spec, modules, w)
    be.set_active_adapter("default")
    be.set_objective(DPO(), "reference")
    be.eval_loss(batch)
    assert be.objective_sums["rewards/margins"] == 0.0 and be.objective_sums["rewards/accuracies"] == 0.0
    be.make_optimizer((0.9, 0.999), 1e-8, 0.0)
    be.accumulate(batch)
    assert be.objective_sums["rewards/chosen"] == 0.0 and be.objective_sums["rewards/rejected"] == 0.0
