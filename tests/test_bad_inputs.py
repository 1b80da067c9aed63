"""Bad inputs of the spine: one clear line naming file/line/key, exit 2, no traceback, nothing written."""
from __future__ import annotations


import pytest

from helpers import run_cli, tiny_config

from jobs.trainer import train


def _train_cli(model, data, out, *extra):
    return run_cli("train", "--backend", "torch", "--model", model, "--data", data, "--output", out,
                   "--steps", "1", *extra)


def _assert_user_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [l for l in result.output.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, result.output
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("content,needles", [
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n', [":2:", "malformed JSON"]),
    ('{"prompt": "a", "completion": "b"}\n{"question": "a", "answer": "b"}\n', [":2:", "no known shape", "question"]),
    ('', ["dataset is empty"]),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', [":1:", "last message must be the assistant"]),
    ('{"instruction": "a", "output": 3}\n', [":1:", '"output" must be a string']),
])
def test_bad_data_files(tiny_model, tmp_path, content, needles):
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    out = tmp_path / "run"
    r = _train_cli(tiny_model, data, out)
    _assert_user_error(r, str(data), *needles)
    assert not out.exists()  # nothing half-written


def test_unknown_config_key_names_the_key(tiny_model, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lora:\n  rnak: 8\ntraining:\n  lr: -1\n")
    r = run_cli("train", "--config", cfg, "--model", tiny_model)
    _assert_user_error(r, str(cfg), "unknown key 'lora.rnak'", "valid in 'lora': rank")


def test_wrong_type_names_the_key(tiny_model, chat_jsonl, tmp_path):
    r = _train_cli(tiny_model, chat_jsonl, tmp_path / "run", "--set", "training.batch_size=two")
    _assert_user_error(r, "training.batch_size: expected an integer, got 'two'")


def test_adapter_for_another_base_is_refused(tiny_model, other_tiny_model, chat_jsonl, tmp_path):
    train(tiny_config(tiny_model, chat_jsonl, tmp_path / "run", training={"steps": 1}), "torch", echo=lambda *a, **k: None)
    r = run_cli("generate", "--model", other_tiny_model, "--adapter", tmp_path / "run" / "adapter", "--prompt", "hi")
    _assert_user_error(r, str(tmp_path / "run" / "adapter"), "adapter was trained on base", "--allow-base-mismatch")
    out = tmp_path / "merged"
    r = run_cli("merge", "--model", other_tiny_model, "--adapter", tmp_path / "run" / "adapter", "--output", out)
    _assert_user_error(r, "adapter was trained on base")
    assert not out.exists()


def test_output_dir_exists_is_refused(tiny_model, chat_jsonl, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = _train_cli(tiny_model, chat_jsonl, out)
    _assert_user_error(r, str(out), "not a twinlora run", "choose another --output")  # not ours (E57)
    assert (out / "keep.txt").read_text() == "x"
    from common.runs.ownership import mark_run
    mark_run(out)  # a run of ours: --resume or --overwrite would be accepted
    _assert_user_error(_train_cli(tiny_model, chat_jsonl, out), str(out), "--resume", "--overwrite")
    assert (out / "keep.txt").read_text() == "x"


def test_missing_backend_library_is_one_line(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "mlx.core" or name.startswith("mlx"):
            raise ImportError("No module named 'mlx'", name="mlx")
        return real(name, *a, **k)
    import sys
    for m in [m for m in sys.modules if m == "mlx" or m.startswith("mlx.")]:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.setattr(builtins, "__import__", fake)
    monkeypatch.setattr("importlib.import_module", lambda name, package=None: fake(name))
    r = run_cli("generate", "--backend", "mlx", "--prompt", "hi")
    _assert_user_error(r, "the mlx backend needs mlx", "pip install")


def test_debug_flag_shows_traceback(tiny_model, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text("{oops\n")
    r = run_cli("--debug", "train", "--model", tiny_model, "--data", data, "--output", tmp_path / "o")
    assert r.exit_code != 0 and r.exception is not None and type(r.exception).__name__ == "DataError"
