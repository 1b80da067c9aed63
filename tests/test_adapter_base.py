"""Every adapter layout meets the same base-weights check (common.adapters.base.check_base): a run's
adapter/, its mlx/ folder (inside the run or copied out, old ones without the recorded hash too), a
plain `mlx_lm lora` adapter whose config names its base, a plain PEFT adapter. On another base each
is refused with E26's line; on its own base each loads; nothing is written into a model folder."""
from __future__ import annotations

import json
import shutil

import pytest

from error_rows import expect_error
from helpers import chat_rows, run_cli, tiny_config, write_jsonl


@pytest.fixture(scope="module")
def mlx_run(tiny_model, tmp_path_factory):
    """A 1-step MLX run on tiny_model: adapter/ and mlx-lm's own adapter/mlx/."""
    from jobs.trainer import train
    root = tmp_path_factory.mktemp("mlxrun")
    data = write_jsonl(root / "train.jsonl", chat_rows(4))
    train(tiny_config(tiny_model, data, root / "run", training={"steps": 1}), "mlx", echo=lambda *a, **k: None)
    assert (root / "run" / "adapter" / "mlx" / "adapters.safetensors").is_file()
    return root / "run"


def _generate(model, adapter, *extra):
    return run_cli("generate", "--backend", "torch", "--model", model, "--adapter", adapter, "--prompt", "hi",
                   "--max-new-tokens", "2", *extra)


def _edit(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _layouts(run, tiny_model, tmp_path):
    """name → adapter directory, one per layout, all trained on tiny_model."""
    out = {"adapter": run / "adapter", "mlx in the run": run / "adapter" / "mlx"}
    out["mlx copied out"] = shutil.copytree(run / "adapter" / "mlx", tmp_path / "mlx-copy")
    old = shutil.copytree(run / "adapter" / "mlx", tmp_path / "mlx-old")  # written before the hash was recorded
    _edit(old / "adapter_config.json", lambda c: c["twinlora"].pop("base_sha256"))
    out["mlx without hash"] = old
    plain = shutil.copytree(run / "adapter" / "mlx", tmp_path / "plain-mlx")  # as `mlx_lm lora --model M` writes it
    _edit(plain / "adapter_config.json", lambda c: (c.pop("twinlora"), c.update(model=str(tiny_model))))
    out["plain mlx_lm"] = plain
    peft = shutil.copytree(run / "adapter", tmp_path / "peft", ignore=shutil.ignore_patterns("mlx"))
    (peft / "twinlora.json").unlink()
    out["plain PEFT"] = peft
    return out


def test_every_layout_is_refused_on_another_base(mlx_run, tiny_model, other_tiny_model, tmp_path):
    from common.adapters.base import check_base
    for name, adapter in _layouts(mlx_run, tiny_model, tmp_path).items():
        line = expect_error(_generate(other_tiny_model, adapter), str(adapter), "adapter was trained on base",
                            f"not on {other_tiny_model}", "--allow-base-mismatch")
        assert "weights sha256" in line, (name, line)
        r = _generate(tiny_model, adapter)
        assert r.exit_code == 0 and "warning" not in r.output, (name, r.output)
        check_base(adapter, other_tiny_model, str(other_tiny_model), allow_mismatch=True)  # merge's flag


def test_an_mlx_folder_under_another_adapter_is_not_taken_for_it(mlx_run, tiny_model, other_tiny_model, tmp_path):
    """The run's twinlora.json vouches for its mlx/ folder only while it lists these very weights."""
    from common.adapters.base import recorded
    fake = shutil.copytree(mlx_run / "adapter", tmp_path / "adapter")
    _edit(fake / "mlx" / "adapter_config.json", lambda c: (c.pop("twinlora"), c.update(model=str(other_tiny_model))))
    with open(fake / "mlx" / "adapters.safetensors", "ab") as fh:
        fh.write(b" ")  # other weights than twinlora.json lists
    assert recorded(fake / "mlx") == {"names": [str(other_tiny_model)], "sha256": None}
    assert recorded(mlx_run / "adapter" / "mlx")["sha256"] == json.loads(
        (mlx_run / "adapter" / "twinlora.json").read_text())["base_model"]["sha256"]


def test_unverifiable_base_says_so_in_one_line(mlx_run, tiny_model, tmp_path):
    plain = shutil.copytree(mlx_run / "adapter" / "mlx", tmp_path / "plain")
    _edit(plain / "adapter_config.json", lambda c: (c.pop("twinlora"), c.update(model="../models/gone")))
    r = _generate(tiny_model, plain)
    assert r.exit_code == 0, r.output
    assert (f"[twinlora] warning: {plain}: the adapter was trained on base '../models/gone', which is not here, so "
            f"nothing checks that {tiny_model} is that base (on other weights it loads and answers wrong)") in r.output
    _edit(plain / "adapter_config.json", lambda c: c.pop("model"))
    r = _generate(tiny_model, plain)
    assert r.exit_code == 0 and "records neither its base nor the base's weight hash" in r.output, r.output


def test_checking_writes_nothing_into_the_model_folders(mlx_run, tiny_model, other_tiny_model, tmp_path, monkeypatch):
    """The weight hashes are cached in twinlora's cache, not beside the user's weights."""
    monkeypatch.setenv("TWINLORA_HOME", str(tmp_path / "home"))
    before = {d: sorted(p.name for p in d.iterdir()) for d in (tiny_model, other_tiny_model)}
    layouts = _layouts(mlx_run, tiny_model, tmp_path)
    expect_error(_generate(other_tiny_model, layouts["plain mlx_lm"]), "adapter was trained on base")
    assert {d: sorted(p.name for p in d.iterdir()) for d in before} == before
    assert len(list((tmp_path / "home" / "hashes").glob("*.json"))) == 2


def test_converted_mlx_folder_keeps_its_base(mlx_run, other_tiny_model, tmp_path):
    """convert --to common of a run's mlx/ folder carries the base hash into twinlora.json."""
    out = tmp_path / "back"
    assert run_cli("convert", mlx_run / "adapter" / "mlx", out, "--to", "common").exit_code == 0
    expect_error(_generate(other_tiny_model, out), "adapter was trained on base", "weights sha256")
