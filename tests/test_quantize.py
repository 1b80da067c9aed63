"""The quantization schemes of `model.quantize` (issue 33): one table, refusals, and for every
scheme quantize → train a step → merge on the backend that runs it (tiny model)."""
from __future__ import annotations

import pytest

from conftest import ROOT

from common.models.quantize import NAMES, RECOMMENDED, SCHEMES, resolve, schemes_of, table_markdown


def test_docs_show_the_scheme_table():
    assert table_markdown() in (ROOT / "docs" / "variants.md").read_text()


def test_every_scheme_runs_on_one_backend_and_4bit_is_the_recommended_one():
    assert set(schemes_of("mlx")) | set(schemes_of("torch")) == set(SCHEMES) and NAMES[0] == "4bit"
    assert not set(schemes_of("mlx")) & set(schemes_of("torch"))
    assert resolve("4bit", "mlx").name == RECOMMENDED["mlx"] == "mlx-nvfp4"   # measured: docs/variants.md
    assert resolve("4bit", "torch").settings == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                                 "bnb_4bit_use_double_quant": True}
    assert resolve("mlx-affine-4-g64", "mlx").settings == {"mode": "affine", "bits": 4, "group_size": 64}
    assert [SCHEMES[n].bits for n in ("mlx-mxfp8", "mlx-affine-8-g64", "int8", "nf4")] == [8, 8, 8, 4]


# ------------------------------------------------------------------ the damage before training

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from helpers import chat_rows, run_cli, tiny_config, write_jsonl  # noqa: E402

IDS = np.array([[1, 9, 33, 120, 64, 5, 17, 80, 2, 7]], dtype=np.int32)
DAMAGE_KEYS = ["against", "argmax_agree", "max_abs_logit_diff", "mean_kl", "positions", "quantizer", "records",
               "scheme", "source"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("qdata")
    return {"train": write_jsonl(root / "train.jsonl", chat_rows(8)),
            "valid": write_jsonl(root / "valid.jsonl", chat_rows(6)[::-1])}


def damage_of(backend: str, model: Path, scheme: str, ids: list[list[int]]) -> dict:
    from backends import get_backend
    from jobs import damage
    cls = get_backend(backend)
    ref = damage.float_logits(cls, model, "float32", ids)
    be = cls(model, quantize=scheme)
    return damage.measure(be, ref, ids, be.scheme, "float32", "validation")


def test_train_measures_the_quantized_base_and_records_it(tiny_model, data, tmp_path):
    """`train` on a quantized base: one line, summary.json, twinlora.json and the model card carry
    the damage, and it is what the float and quantized bases give on the first validation records."""
    from jobs.damage import MAX_TOKENS, RECORDS
    from jobs.session import open_model
    from jobs.trainer import train
    out, lines = tmp_path / "run", []
    cfg = tiny_config(tiny_model, data["train"], out, training={"steps": 1, "save_every": 0},
                      data={"valid": str(data["valid"])})
    cfg.model.quantize = "4bit"
    summary = train(cfg, "mlx", echo=lines.append)
    d = summary["quantization_damage"]
    assert sorted(d) == DAMAGE_KEYS
    assert (d["scheme"], d["source"], d["records"], d["against"]) == ("mlx-nvfp4", "validation", RECORDS,
                                                                       "float base in float32")
    assert d["quantizer"] == SCHEMES["mlx-nvfp4"].label
    assert 0 < d["mean_kl"] < 1 and 0 <= d["argmax_agree"] <= 1 and d["max_abs_logit_diff"] > 1e-3
    # recomputed from the validation records as the run tokenized them
    from common.training.tokenize import Tokenizer
    from common.data.formats import load_examples
    tok = Tokenizer(open_model("mlx", str(tiny_model)).tokenizer, "chat", max_length=128)
    ids = [list(r.ids[:MAX_TOKENS]) for r in tok.encode_all(load_examples(str(data["valid"])), "v")[:RECORDS]]
    again = damage_of("mlx", tiny_model, "4bit", ids)
    assert d["positions"] == sum(map(len, ids)) == again["positions"]
    assert abs(d["mean_kl"] - again["mean_kl"]) < 1e-9 and d["argmax_agree"] == again["argmax_agree"]
    line = (f"[twinlora] quantized base mlx-nvfp4 vs the float base in float32, on {RECORDS} validation records "
            f"({d['positions']} positions): mean KL {d['mean_kl']:.4g}, same argmax {d['argmax_agree']:.1%}")
    assert line in lines and line[len("[twinlora] "):] in (out / "README.md").read_text()
    meta = json.loads((out / "adapter" / "twinlora.json").read_text())
    assert meta["metrics"]["quantization_damage"] == d
    assert json.loads((out / "summary.json").read_text())["quantization_damage"] == d
    card = (out / "adapter" / "README.md").read_text()
    assert f"| quantized base vs float: mean KL | {d['mean_kl']:.4g} |" in card
    assert f"| quantized base vs float: same argmax | {d['argmax_agree']:.1%} of {d['positions']} positions" in card


def test_a_float_run_measures_nothing(tiny_model, data, tmp_path):
    from jobs.trainer import train
    cfg = tiny_config(tiny_model, data["train"], tmp_path / "run", training={"steps": 1, "save_every": 0})
    assert "quantization_damage" not in train(cfg, "mlx", echo=lambda *a: None)


@pytest.mark.parametrize("backend, high, low", [("mlx", "mlx-affine-8-g64", "mlx-affine-4-g64"),
                                                ("mlx", "mlx-mxfp8", "mlx-mxfp4"), ("torch", "int8", "nf4")])
def test_more_bits_less_damage(backend, high, low, tiny_model):
    pytest.importorskip("bitsandbytes") if backend == "torch" else None
    ids = [list(IDS[0]), [1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]
    h, lo = damage_of(backend, tiny_model, high, ids), damage_of(backend, tiny_model, low, ids)
    assert 0 <= h["mean_kl"] < lo["mean_kl"] / 4 and lo["mean_kl"] > 1e-3
    assert 0 <= lo["argmax_agree"] <= h["argmax_agree"] <= 1 and h["argmax_agree"] >= 0.9
    assert h["positions"] == lo["positions"] == 22


# ------------------------------------------------------------------ every scheme: quantize → train → merge

@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_every_scheme_trains_a_step_and_merges(scheme, tiny_model, data, tmp_path):
    """On the backend that runs it: one step over the quantized base, then `merge --quantize
    SCHEME` gives a float model equal to the quantized base + adapter (LLM.int8 rounds activations
    too: close only)."""
    from jobs.session import open_model
    from jobs.trainer import train
    backend = SCHEMES[scheme].backend
    if backend == "torch":
        pytest.importorskip("bitsandbytes")
    out = tmp_path / "run"
    cfg = tiny_config(tiny_model, data["train"], out, training={"steps": 1, "save_every": 0})
    cfg.model.quantize = scheme
    s = train(cfg, backend, echo=lambda *a: None)
    assert s["quantize"] == scheme and s["quantization_damage"]["scheme"] == scheme
    assert s["quantization_damage"]["source"] == "training" and np.isfinite(s["final_loss"])
    assert 0 <= s["quantization_damage"]["mean_kl"] and 0 <= s["quantization_damage"]["argmax_agree"] <= 1
    assert s["base_weight_bytes"] < s["base_weight_bytes_unquantized"]
    merged = tmp_path / "merged"
    r = run_cli("merge", "--backend", backend, "--model", tiny_model, "--adapter", out / "adapter",
                "--output", merged, "--quantize", scheme)
    assert r.exit_code == 0, r.output
    info = json.loads((merged / "twinlora_merge.json").read_text())
    assert info["quantized_base"] == info["adapter_trained_on_quantized_base"] == scheme
    assert info["quantized_base_scheme"] == info["adapter_trained_on_scheme"] == s["quantize_scheme"] == scheme
    assert json.loads((out / "adapter" / "twinlora.json").read_text())["quantize_scheme"] == scheme
    q = open_model(backend, str(tiny_model), quantize=scheme, adapter=out / "adapter").backend.logits(IDS)
    plain = open_model(backend, str(merged)).backend.logits(IDS)
    assert np.abs(plain - q).max() < (0.5 if scheme == "int8" else 1e-4)
    assert np.abs(plain - open_model(backend, str(tiny_model)).backend.logits(IDS)).max() > 1e-3  # not the float base


# ------------------------------------------------------------------ the resolved scheme, recorded

def test_an_old_checkpoint_resumes_on_the_scheme_4bit_meant_then(tiny_model, data, tmp_path, monkeypatch):
    """Checkpoints, twinlora.json and summary.json record the scheme `4bit` resolved to. A checkpoint
    written before they did (no `quantize_scheme`) resumes on what `4bit` meant then on MLX,
    mlx-affine-4-g64, after the default moved, and ends bit-identical to the uninterrupted run."""
    from common.models import quantize
    from helpers import max_abs_diff, tensors
    from jobs.trainer import train
    lines: list[str] = []

    def run(out: Path, steps: int, **kw) -> dict:
        cfg = tiny_config(tiny_model, data["train"], out, training={"steps": steps, "save_every": 1})
        cfg.model.quantize = "4bit"
        return train(cfg, "mlx", echo=lines.append, **kw)

    monkeypatch.setitem(quantize.RECOMMENDED, "mlx", "mlx-affine-4-g64")   # 4bit as before the scheme table
    whole = run(tmp_path / "whole", 2)
    assert whole["quantize_scheme"] == "mlx-affine-4-g64"
    assert json.loads((tmp_path / "whole" / "adapter" / "twinlora.json").read_text())["quantize_scheme"] == "mlx-affine-4-g64"
    run(tmp_path / "part", 1)
    for state in (tmp_path / "part" / "checkpoints").glob("*/trainer_state.json"):   # as an old run wrote it
        old = json.loads(state.read_text())
        assert old.pop("quantize_scheme") == "mlx-affine-4-g64" and old["config"]["model"]["quantize"] == "4bit"
        state.write_text(json.dumps(old))
    monkeypatch.undo()                                                    # the default as it is now
    resumed = run(tmp_path / "part", 2, resume=True)
    assert ("[twinlora] note: resuming on mlx-affine-4-g64, the base this run was trained on "
            "(4bit now means mlx-nvfp4 on mlx)") in lines
    assert resumed["quantize_scheme"] == resumed["quantization_damage"]["scheme"] == "mlx-affine-4-g64"
    weights = "adapter/adapter_model.safetensors"
    assert max_abs_diff(tensors(tmp_path / "part" / weights), tensors(tmp_path / "whole" / weights)) == 0.0
    last = sorted((tmp_path / "part" / "checkpoints").glob("*/trainer_state.json"))[-1]
    assert json.loads(last.read_text())["quantize_scheme"] == "mlx-affine-4-g64"
