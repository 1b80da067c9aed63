"""What a practitioner expects from training (issue 16 items 1-4, 9): every assistant turn trained
(the same mask on both backends), validation before/after with the best adapter and early
stopping (exact on resume), steps vs epochs, experiment tracking, other tools' config names."""
from __future__ import annotations

import csv
import io
import json
import struct

import numpy as np
import pytest

from helpers import chat_rows, run_cli, tiny_config, write_jsonl

from common.config.schema import load_config
from common.data.formats import load_examples
from common.errors import ConfigError
from common.runs.run_dir import RunDir
from common.training.tokenize import Tokenizer, load_tokenizer
from jobs.trainer import train

BACKENDS = ("mlx", "torch")


def quiet(*a, **k):
    pass


def multi_turn_rows(n: int = 8) -> list[dict]:
    """Three-turn chats: two assistant answers each, the first one differing per record."""
    return [{"messages": [{"role": "system", "content": "Tu es juriste."},
                          {"role": "user", "content": f"Que dit l'article L{100 + i}-1 ?"},
                          {"role": "assistant", "content": f"Il prévoit le droit {i}."},
                          {"role": "user", "content": "Et ensuite ?"},
                          {"role": "assistant", "content": f"L'article L{100 + i}-2 précise le délai {i}."}]}
            for i in range(n)]


# ---------------------------------------------------------------- item 1: multi-turn masks

def _trained_text(tok, t) -> list[str]:
    """The decoded runs of trained tokens of one Tokenized example."""
    runs, cur = [], []
    for i, m in zip(t.ids, t.mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def test_all_assistant_turns_are_trained_last_only_on_request(tiny_model, tmp_path):
    tok = load_tokenizer(tiny_model)
    ex = load_examples(write_jsonl(tmp_path / "mt.jsonl", multi_turn_rows(1)))[0]
    every = Tokenizer(tok, "chat", train_on="all_assistant").encode(ex)
    assert _trained_text(tok, every) == ["Il prévoit le droit 0.<|im_end|>\n",
                                         "L'article L100-2 précise le délai 0.<|im_end|>\n"]
    last = Tokenizer(tok, "chat", train_on="last").encode(ex)
    assert _trained_text(tok, last) == ["L'article L100-2 précise le délai 0.<|im_end|>\n"]
    assert every.ids == last.ids  # the mask changes, never the tokens
    assert Tokenizer(tok, "chat", train_on="all").encode(ex).mask == (1,) * len(every.ids)
    assert Tokenizer(tok, "chat", mask_prompt=False, train_on="last").encode(ex).mask == (1,) * len(every.ids)
    # raw template: the earlier assistant content is trained too, the separators are not
    raw = Tokenizer(tok, "raw", train_on="all_assistant").encode(ex)
    assert _trained_text(tok, raw) == ["Il prévoit le droit 0.", "L'article L100-2 précise le délai 0.<|im_end|>"]


def test_single_turn_masks_are_unchanged(tiny_model, chat_jsonl):
    tok = load_tokenizer(tiny_model)
    for ex in load_examples(chat_jsonl):
        assert Tokenizer(tok, train_on="all_assistant").encode(ex) == Tokenizer(tok, train_on="last").encode(ex)


def test_multi_turn_same_masks_and_loss_curves_on_both_backends(tiny_model, tmp_path, monkeypatch):
    from backends import get_backend
    data = write_jsonl(tmp_path / "mt.jsonl", multi_turn_rows(8))
    seen = {}
    for name in BACKENDS:
        cls = get_backend(name)
        got = seen.setdefault(name, [])

        def spy(self, batch, sync=True, _orig=cls.accumulate, _got=got):
            _got.append((batch.ids.copy(), batch.mask.copy()))
            return _orig(self, batch, sync)
        monkeypatch.setattr(cls, "accumulate", spy)
        train(tiny_config(tiny_model, data, tmp_path / name, training={"steps": 5}), name, echo=quiet)
    assert len(seen["mlx"]) == len(seen["torch"]) == 5
    tok = load_tokenizer(tiny_model)
    for (ia, ma), (ib, mb) in zip(seen["mlx"], seen["torch"]):
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb)
        for ids, mask in zip(ia, ma):  # two trained runs per row: both assistant turns
            edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])) == 1)
            assert len(edges) == 2, tok.decode(ids)
    logs = {n: [r["loss"] for r in RunDir(tmp_path / n).read_log() if r.get("event") == "train"] for n in BACKENDS}
    assert len(logs["mlx"]) == 5 and max(abs(a - b) for a, b in zip(logs["mlx"], logs["torch"])) < 1e-4, logs
    meta = json.loads((tmp_path / "mlx/adapter/twinlora.json").read_text())
    assert meta["train_on"] == "all_assistant"


# ---------------------------------------------------------------- item 2: validation, best, early stopping

@pytest.fixture
def split(tmp_path):
    rows = chat_rows(16)
    return write_jsonl(tmp_path / "train.jsonl", rows[:12]), write_jsonl(tmp_path / "valid.jsonl", rows[12:])


def test_validation_before_and_after_printed_logged_and_plotted(tiny_model, split, tmp_path):
    train_file, valid_file = split
    lines = []
    cfg = tiny_config(tiny_model, train_file, tmp_path / "run", data={"valid": str(valid_file)},
                      training={"steps": 4, "eval_every": 2})
    s = train(cfg, "torch", echo=lambda m="", **k: lines.append(m))
    evals = [(r["step"], r["val_loss"]) for r in RunDir(tmp_path / "run").read_log() if r.get("event") == "eval"]
    assert [e[0] for e in evals] == [0, 2, 4]
    assert s["val_loss_before"] == evals[0][1] and s["val_loss"] == evals[-1][1] < evals[0][1]
    text = "\n".join(lines)
    assert f"step 0/4  validation loss {evals[0][1]:.4f} (before training)" in text
    assert "[twinlora] validation after training: 4 examples, 2 batches" in text
    pct = 100 * (evals[-1][1] - evals[0][1]) / evals[0][1]
    assert f"step 4/4  validation loss {evals[-1][1]:.4f} (before training {evals[0][1]:.4f}, {pct:+.1f}%" in text
    readme = (tmp_path / "run/README.md").read_text()
    assert f"(before training: {evals[0][1]:.4f})" in readme
    assert (tmp_path / "run/adapter-best/adapter_model.safetensors").is_file()
    # eval_every 0: validations before and after only; the last adapter is the best one, no copy
    cfg = tiny_config(tiny_model, train_file, tmp_path / "run0", data={"valid": str(valid_file)}, training={"steps": 2})
    s0 = train(cfg, "torch", echo=quiet)
    assert s0["val_loss_before"] is not None and s0["best_step"] == 2 and not (tmp_path / "run0/adapter-best").exists()


def test_loss_plot_has_title_validation_curve_and_baseline(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    run = RunDir(tmp_path)
    for step, loss in [(1, 3.0), (2, 2.5), (3, 2.0)]:
        run.log({"event": "train", "step": step, "loss": loss})
    for step, val in [(0, 3.2), (2, 2.6), (3, 2.7)]:
        run.log({"event": "eval", "step": step, "val_loss": val})
    drawn = {}
    real = Figure.savefig

    def spy(self, *a, **k):
        ax = self.axes[0]
        drawn["title"] = ax.get_title()
        drawn["lines"] = {l.get_label(): list(zip(*l.get_data())) for l in ax.get_lines()}
        return real(self, *a, **k)
    monkeypatch.setattr(Figure, "savefig", spy)
    assert run.plot_loss(title="legi-demo: mlx", best_step=2).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn["title"] == "legi-demo: mlx"
    lines = drawn["lines"]
    assert lines["train loss"] == [(1, 3.0), (2, 2.5), (3, 2.0)]
    assert lines["validation loss"] == [(0, 3.2), (2, 2.6), (3, 2.7)]
    assert lines["validation before training (3.200)"] == [(0, 3.2), (1, 3.2)]  # axhline in axes coordinates
    assert lines["best (step 2, 2.600)"] == [(2, 2.6)]


def overfit_split(tmp_path):
    valid = [{"prompt": f"Who ruled the duchy {i}?", "completion": "The Normans gave their name to Normandy."}
             for i in range(4)]
    return write_jsonl(tmp_path / "train.jsonl", chat_rows(12)), write_jsonl(tmp_path / "valid.jsonl", valid)


def test_best_tracker_rules():
    from jobs.validation import BestTracker
    b = BestTracker(patience=2, min_delta=0.1)
    assert b.update(1, 2.0) and b.bad == 0
    assert b.update(2, 1.95) and b.bad == 1 and b.best_step == 2  # new best, but not by > min_delta
    assert not b.update(3, 1.99) and b.bad == 2 and b.stopped_at == 3
    again = BestTracker.from_state({"validation": b.state()}, 2, 0.1)
    assert again == b


def test_best_adapter_and_early_stopping_resume_exactly(tiny_model, tmp_path, monkeypatch):
    """Validation on other text than the training set: its loss drops, then rises as the model
    overfits; early stopping ends the run, adapter-best/ holds the best step's weights; a run
    interrupted mid-way and resumed stops at the same step with the same adapters."""
    from common.adapters.format import load_adapter
    train_file, valid_file = overfit_split(tmp_path)

    def cfg(out, **extra):
        return tiny_config(tiny_model, train_file, tmp_path / out, data={"valid": str(valid_file)},
                           training={"steps": 40, "eval_every": 1, "save_every": 1, "lr": 0.05,
                                     "early_stopping_patience": 2, **extra})
    s = train(cfg("full"), "torch", echo=quiet)
    stop = s["stopped_early_at"]
    assert stop is not None and stop < 40 and s["best_step"] == stop - 2
    evals = {r["step"]: r["val_loss"] for r in RunDir(tmp_path / "full").read_log() if r.get("event") == "eval"}
    assert min(v for k, v in evals.items() if k > 0) == s["best_val_loss"] == evals[s["best_step"]]
    best_w = load_adapter(tmp_path / "full/adapter-best")[1]
    ckpt_w = RunDir(tmp_path / "full").load_checkpoint(tmp_path / f"full/checkpoints/step-{s['best_step']:06d}")[0] \
        if (tmp_path / f"full/checkpoints/step-{s['best_step']:06d}").is_dir() else None
    last_w = load_adapter(tmp_path / "full/adapter")[1]
    assert any(not np.array_equal(best_w[k], last_w[k]) for k in best_w)
    if ckpt_w is not None:
        assert all(np.array_equal(best_w[k], ckpt_w[k]) for k in best_w)

    # interrupted one step before the stop, then resumed
    from backends.torch.backend import Backend
    orig, calls = Backend.accumulate, {"n": 0}

    def interrupt(self, batch, sync=True):
        calls["n"] += 1
        if calls["n"] == stop:  # grad_accumulation 1: call n is step n
            raise KeyboardInterrupt
        return orig(self, batch, sync)
    monkeypatch.setattr(Backend, "accumulate", interrupt)
    with pytest.raises(Exception, match="interrupted"):
        train(cfg("resumed"), "torch", echo=quiet)
    monkeypatch.setattr(Backend, "accumulate", orig)
    s2 = train(cfg("resumed"), "torch", echo=quiet, resume=True)
    assert (s2["stopped_early_at"], s2["best_step"], s2["best_val_loss"]) == (stop, s["best_step"], s["best_val_loss"])
    for name in ("adapter", "adapter-best"):
        a, b = load_adapter(tmp_path / "full" / name)[1], load_adapter(tmp_path / "resumed" / name)[1]
        assert all(np.array_equal(a[k], b[k]) for k in a), name
    # --resume of a run that stopped early: nothing more to train
    s3 = train(cfg("resumed"), "torch", echo=quiet, resume=True)
    assert s3["stopped_early_at"] == stop and s3["final_loss"] == s2["final_loss"]


def test_early_stopping_on_mlx_stops_where_torch_does(tiny_model, tmp_path):
    train_file, valid_file = overfit_split(tmp_path)
    out = {}
    for b in BACKENDS:
        out[b] = train(tiny_config(tiny_model, train_file, tmp_path / b, data={"valid": str(valid_file)},
                                   training={"steps": 40, "eval_every": 1, "save_every": 0, "lr": 0.05,
                                             "early_stopping_patience": 2}), b, echo=quiet)
    assert out["mlx"]["stopped_early_at"] == out["torch"]["stopped_early_at"] is not None
    assert out["mlx"]["best_step"] == out["torch"]["best_step"]
    assert (tmp_path / "mlx/adapter-best/mlx/adapters.safetensors").is_file()


def test_truncation_warning_once_counts_lost_completions(tiny_model, tmp_path):
    long = " ".join(["Le salarié a droit à un congé payé."] * 12)
    rows = [{"prompt": f"Q{i}", "completion": long} for i in range(3)] + chat_rows(2)
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    tok = load_tokenizer(tiny_model)
    full = [Tokenizer(tok, max_length=10_000).encode(ex) for ex in load_examples(data)]
    cut = max(len(f.ids) for f in full[3:])  # the two chat rows fit, the three long ones do not
    r = run_cli("train", "--backend", "torch", "--model", tiny_model, "--data", data, "--output", tmp_path / "run",
                "--steps", "1", "--set", f"data.max_length={cut}")
    assert r.exit_code == 0, r.output
    lost = sum(sum(f.mask[cut:]) for f in full)
    total = sum(sum(f.mask[1:]) for f in full)
    assert lost > 0 and all(len(f.ids) > cut for f in full[:3])
    warn = [l for l in r.output.splitlines() if "truncated" in l]
    assert warn == [f"[twinlora] warning: 3 of 5 training examples truncated to max_length={cut}; 3 lose completion "
                    f"tokens ({lost:,} of {total:,} trained tokens cut) — raise data.max_length to keep them"], r.output


# ---------------------------------------------------------------- item 3: steps vs epochs

def test_epochs_are_honoured_and_steps_win_when_set(tiny_model, chat_jsonl, tmp_path):
    from jobs.train_setup import length_note, total_steps
    assert load_config(overrides={"data": {"train": "x"}}).training.steps is None
    cfg = load_config(overrides={"training": {"epochs": 3, "batch_size": 2, "grad_accumulation": 2}})
    assert total_steps(cfg, 12) == 9  # 6 batches per epoch / 2 per step × 3 epochs
    assert total_steps(load_config(overrides={"training": {"batch_size": 4}}), 12) == 3  # 1 epoch by default
    both = load_config(overrides={"training": {"epochs": 3, "steps": 5}})
    assert total_steps(both, 12) == 5
    assert "training.epochs=3 is ignored: steps wins" in length_note(both, 12, 5)
    lines = []
    s = train(tiny_config(tiny_model, chat_jsonl, tmp_path / "run", training={"steps": None, "epochs": 2,
                                                                              "batch_size": 4}),
              "torch", echo=lambda m="", **k: lines.append(m))
    assert s["steps"] == 6 and "[twinlora] steps=6 (2 epochs of 12 examples, 4 × 1 per step)" in lines


def test_seed_configs_do_not_need_steps_null():
    from conftest import ROOT
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        text = path.read_text()
        assert "steps: null" not in text, path
        cfg = load_config(path)
        assert (cfg.training.steps is None) == ("epochs:" in text), path


# ---------------------------------------------------------------- item 4: tracking

def _tb_scalars(logdir) -> dict:
    """{tag: [(step, value)]} read from TensorBoard event files (TFRecord framing + Event protos),
    in write order, with TensorBoard's purge on a restart (SessionLog START at step s drops steps >= s)."""
    from tensorboardX.proto import event_pb2
    events = []
    for f in logdir.glob("events.out.tfevents.*"):
        data, pos = f.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos: pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12: pos + 12 + n]))
            pos += 12 + n + 4
    out: dict = {}
    for ev in sorted(events, key=lambda e: e.wall_time):
        if ev.session_log.status == ev.session_log.START:
            out = {k: [(s, v) for s, v in pts if s < ev.step] for k, pts in out.items()}
        for v in ev.summary.value:
            out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def test_csv_and_tensorboard_match_the_log(tiny_model, split, tmp_path):
    train_file, valid_file = split
    cfg = tiny_config(tiny_model, train_file, tmp_path / "run", data={"valid": str(valid_file)},
                      training={"steps": 4, "eval_every": 2, "report_to": "csv,tensorboard"})
    train(cfg, "mlx", echo=quiet)
    log = RunDir(tmp_path / "run").read_log()
    rows = list(csv.DictReader(io.StringIO((tmp_path / "run/metrics.csv").read_text())))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4]
    train_rows = [r for r in log if r.get("event") == "train"]
    assert [float(r["loss"]) for r in rows[1:]] == [r["loss"] for r in train_rows]
    evals = {r["step"]: r["val_loss"] for r in log if r.get("event") == "eval"}
    assert {int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]} == evals
    tb = _tb_scalars(tmp_path / "run/tensorboard")
    assert [s for s, _ in tb["train/loss"]] == [1, 2, 3, 4]
    assert np.allclose([v for _, v in tb["train/loss"]], [r["loss"] for r in train_rows], rtol=1e-6)
    assert np.allclose([v for _, v in tb["train/learning_rate"]], [r["lr"] for r in train_rows], rtol=1e-6)
    assert [s for s, _ in tb["eval/loss"]] == sorted(evals)


def test_tensorboard_after_resume_has_no_duplicate_steps(tmp_path):
    """A killed run logged steps 1-5 but its checkpoint is step 3: the resumed writer purges 4-5."""
    from common.runs.tracking import Trackers
    run = RunDir(tmp_path)
    first = Trackers(["tensorboard"], run, {}, None, "r")
    for step in range(1, 6):
        first.log({"event": "train", "step": step, "loss": float(step), "lr": 0.1})
    first.close()
    again = Trackers(["tensorboard"], run, {}, 4, "r")
    for step in range(4, 7):
        again.log({"event": "train", "step": step, "loss": 10.0 * step, "lr": 0.1})
    again.close()
    assert _tb_scalars(tmp_path / "tensorboard")["train/loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0),
                                                                   (5, 50.0), (6, 60.0)]


def test_tracker_names_are_checked(tiny_model, chat_jsonl, tmp_path):
    with pytest.raises(ConfigError, match="training.report_to: 'comet' is not one of csv, tensorboard, wandb, mlflow"):
        load_config(overrides={"training": {"report_to": ["csv", "comet"]}})
    assert load_config(overrides={"training": {"report_to": "none"}}).training.report_to == []


def test_wandb_gets_the_metrics_when_installed(tiny_model, chat_jsonl, tmp_path, monkeypatch):
    """A stand-in `wandb` module records what the tracker sends (the real client is not installed here)."""
    import sys
    import types
    calls = []
    fake = types.ModuleType("wandb")
    fake.__spec__ = types.SimpleNamespace(name="wandb")

    class Run:
        def log(self, data, step):
            calls.append(("log", step, data))

        def finish(self):
            calls.append(("finish",))
    fake.init = lambda **k: calls.append(("init", k["name"], k["config"]["lora"]["rank"])) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object() if name == "wandb" else None)
    train(tiny_config(tiny_model, chat_jsonl, tmp_path / "run", training={"steps": 2, "report_to": ["wandb"]}),
          "torch", echo=quiet)
    assert calls[0] == ("init", "run", 8) and calls[-1] == ("finish",)
    assert [c[1] for c in calls if c[0] == "log"] == [1, 2]
    assert set(calls[1][2]) == {"train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_s"}


# ---------------------------------------------------------------- item 9: familiar names

TRL_CONFIG = """\
model_name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct
learning_rate: 2.0e-4
num_train_epochs: 3
per_device_train_batch_size: 4
gradient_accumulation_steps: 2
max_seq_length: 512
lora_r: 16
output_dir: runs/x
"""

MLX_LM_CONFIG = """\
model: mlx-community/SmolLM2-135M-Instruct
train: true
data: data/
iters: 600
batch_size: 4
num_layers: 16
lora_parameters: {rank: 8, scale: 20.0, dropout: 0.0}
"""


def test_trl_style_config_gets_did_you_mean(tmp_path):
    path = tmp_path / "trl.yaml"
    path.write_text(TRL_CONFIG)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    for theirs, ours in [("model_name_or_path", "model.path"), ("learning_rate", "training.lr"),
                         ("num_train_epochs", "training.epochs"), ("per_device_train_batch_size", "training.batch_size"),
                         ("gradient_accumulation_steps", "training.grad_accumulation"),
                         ("max_seq_length", "data.max_length"), ("lora_r", "lora.rank"), ("output_dir", "output")]:
        assert f"unknown key '{theirs}', did you mean {ours}?" in msg, theirs
    assert msg.endswith("fix: rename the keys as suggested; see `cli.py config-help` for every key, its type and default")


def test_mlx_lm_style_config_gets_did_you_mean(tmp_path):
    path = tmp_path / "mlx.yaml"
    path.write_text(MLX_LM_CONFIG)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "'model' must be a mapping of keys, got 'mlx-community/SmolLM2-135M-Instruct', did you mean model.path?" in msg
    assert "'data' must be a mapping of keys, got 'data/', did you mean data.train?" in msg
    assert "unknown key 'iters', did you mean training.steps?" in msg
    assert "unknown key 'batch_size', did you mean training.batch_size?" in msg
    assert "unknown key 'num_layers', did you mean lora.layers?" in msg
    assert "lora.scale (alpha = scale × rank)" in msg
    assert "unknown key 'train' (mlx-lm's train: true has no key here" in msg


def test_typos_and_wrong_sections_get_did_you_mean():
    with pytest.raises(ConfigError) as e:
        load_config(overrides={"lora": {"rnak": 8}, "training": {"rank": 4, "max_seq_length": 9, "zzz": 1}})
    msg = str(e.value)
    assert "unknown key 'lora.rnak', did you mean lora.rank?" in msg
    assert "unknown key 'training.rank', did you mean lora.rank?" in msg
    assert "unknown key 'training.max_seq_length', did you mean data.max_length?" in msg
    assert "unknown key 'training.zzz' (valid in 'training': steps, epochs," in msg


def test_mlx_lm_scale_becomes_alpha(tiny_model, chat_jsonl, tmp_path):
    from common.adapters.format import load_adapter, scale_of
    cfg = load_config(overrides={"lora": {"rank": 8, "scale": 20.0}})
    assert (cfg.lora.alpha, cfg.lora.scale) == (160.0, None)
    rs = load_config(overrides={"lora": {"rank": 16, "scale": 2.0, "use_rslora": True}})
    assert rs.lora.alpha == 8.0  # alpha / sqrt(16) = 2
    with pytest.raises(ConfigError, match="lora.scale=20 and lora.alpha=16 disagree"):
        load_config(overrides={"lora": {"rank": 8, "scale": 20, "alpha": 16}})
    lines = []
    train(tiny_config(tiny_model, chat_jsonl, tmp_path / "run", lora={"rank": 4, "scale": 20.0},
                      training={"steps": 1}), "mlx", echo=lambda m="", **k: lines.append(m))
    assert ("[twinlora] note: lora.scale=20 (mlx-lm's scale) → lora.alpha = scale × r = 20 × 4 = 80; the update "
            "is scaled by alpha/r = 20, as in mlx-lm") in lines
    spec = load_adapter(tmp_path / "run/adapter")[0]
    assert spec.alpha == 80 and scale_of(spec.rank, spec.alpha, spec.use_rslora) == 20
    mlx_cfg = json.loads((tmp_path / "run/adapter/mlx/adapter_config.json").read_text())
    assert mlx_cfg["lora_parameters"]["scale"] == 20


def test_data_folder_like_mlx_lm(tiny_model, tmp_path):
    folder = tmp_path / "data"
    rows = chat_rows(10)
    write_jsonl(folder / "train.jsonl", rows[:8])
    write_jsonl(folder / "valid.jsonl", rows[8:])
    r = run_cli("train", "--backend", "torch", "--model", tiny_model, "--data", folder, "--output",
                tmp_path / "run", "--steps", "1")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "run/adapter/twinlora.json").read_text())
    assert meta["data"]["train"]["path"] == str(folder / "train.jsonl")
    assert meta["data"]["valid"]["path"] == str(folder / "valid.jsonl")
    assert "validation loss" in r.output


def test_config_help_shows_choices():
    r = run_cli("config-help")
    assert r.exit_code == 0 and "(Literal)" not in r.output
    assert "schedule: 'cosine'   (one of: cosine | linear | constant)" in r.output
    assert ("quantize: None   (one of: 4bit | mlx-affine-4-g32 | mlx-affine-4-g64 | mlx-mxfp4 | mlx-nvfp4 | mlx-mxfp8 "
            "| mlx-affine-8-g64 | nf4 | nf4-dq | fp4 | int8 or null)") in r.output
    assert "train_on: 'all_assistant'   (one of: all_assistant | last | all)" in r.output
    assert "  training.lr: learning_rate" in r.output and "  training.steps: iters, max_steps" in r.output


def test_prepare_help_lists_each_recipes_options():
    from common.data.recipes import RECIPES
    r = run_cli("prepare", "--help")
    assert r.exit_code == 0
    for recipe in RECIPES.values():
        for name in recipe.all_options:
            assert f"{recipe.name}: --option {name}=" in " ".join(r.output.split()) or \
                f"--option {name}=" in " ".join(r.output.split()), (recipe.name, name)
