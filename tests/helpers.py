"""Small helpers shared by the tests: train a tiny run, call the CLI in-process."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner


def chat_rows(n: int = 12) -> list[dict]:
    """n short French chat records (user question, assistant answer): the tests' training data."""
    return [{"messages": [{"role": "user", "content": f"Que dit l'article L{100 + i}-1 ?"},
                          {"role": "assistant", "content": f"L'article L{100 + i}-1 prévoit le droit {i}."}]}
            for i in range(n)]


def chat_pairs(n: int = 8) -> list[dict]:
    """Chat pairs; every third one has a multi-turn prompt (an earlier assistant turn)."""
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"Que dit l'article L{100 + i}-1 ?"}]
        if i % 3 == 0:
            prompt = [{"role": "user", "content": "Bonjour."}, {"role": "assistant", "content": "Bonjour !"}, *prompt]
        rows.append({"prompt": prompt,
                     "chosen": [{"role": "assistant", "content": f"L'article L{100 + i}-1 prévoit le droit {i}."}],
                     "rejected": [{"role": "assistant", "content": f"Je ne sais pas, désolé {i}."}]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """common.runs.io.write_jsonl, returning the path (handy in fixtures)."""
    from common.runs.io import write_jsonl as write_rows
    write_rows(path, rows)
    return path


def tiny_config(model: Path, train_file: Path, out: Path, **sections):
    from common.config.schema import load_config
    over = {"model": {"path": str(model)}, "data": {"train": str(train_file), "max_length": 128},
            "training": {"steps": 4, "batch_size": 2, "lr": 1e-2, "save_every": 2, "log_every": 1},
            "lora": {"target_modules": "all-linear"}, "output": str(out)}
    for sec, values in sections.items():
        over.setdefault(sec, {}).update(values)
    return load_config(overrides=over)


def run_cli(*args: str):
    """Invoke cli.py in-process; returns click's Result (exit_code, output)."""
    import cli
    return CliRunner().invoke(cli.cli, [str(a) for a in args], obj={})


def merge_quantized(backend: str, model: Path, adapter: Path, out: Path) -> dict:
    """`merge --quantize 4bit` on `backend`: checks it ran, recorded the 4-bit base the adapter was
    trained on, and printed the precision lost; returns twinlora_merge.json's precision_lost."""
    import json
    r = run_cli("merge", "--backend", backend, "--model", model, "--adapter", adapter, "--output", out,
                "--quantize", "4bit")
    assert r.exit_code == 0, r.output
    info = json.loads((Path(out) / "twinlora_merge.json").read_text())
    lost = info["precision_lost"]
    assert info["quantized_base"] == "4bit" and info["adapter_trained_on_quantized_base"] == "4bit"
    assert f"max |Δlogit| {lost['max_abs_logit_diff']:.4g}" in r.output
    return lost


def tensors(path: Path) -> dict:
    """The arrays of a safetensors file (adapter weights, optimizer state)."""
    from safetensors.numpy import load_file
    return load_file(str(path))


def max_abs_diff(a: dict, b: dict) -> float:
    """Largest |a − b| over two dicts of arrays with the same keys, in float64."""
    import numpy as np
    assert sorted(a) == sorted(b)
    return max(float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in a)


def backend_with_lora(name: str, model, **backend_kwargs):
    """A backend with rank-4 all-linear LoRA whose B is non-zero, so every LoRA gradient is informative."""
    import numpy as np

    from backends import get_backend
    from common.adapters.format import init_lora_weights, spec_from_config
    from common.config.schema import LoraConfig
    be = get_backend(name)(model, **backend_kwargs)
    spec, mods = spec_from_config(LoraConfig(rank=4, alpha=8, target_modules="all-linear"), be.linear_modules(),
                                  be.num_hidden_layers(), str(model))
    rng = np.random.default_rng(1)
    w = {k: (rng.normal(0, 0.05, v.shape).astype(np.float32) if "lora_B" in k else v)
         for k, v in init_lora_weights(spec, mods, 0).items()}
    be.attach_lora(spec, mods, w)
    return be


def loss_and_lora_grads(be, batch):
    """The summed loss of one accumulate and every LoRA gradient under its PEFT name; clears the gradients."""
    import numpy as np
    s, _ = be.accumulate(batch)
    if be.name == "mlx":
        from mlx.utils import tree_flatten

        from common.adapters.format import mlx_to_peft
        grads = mlx_to_peft({k: np.array(v) for k, v in tree_flatten(be._grads)})
        be._grads = None
    else:
        grads = {k: p.grad.detach().numpy().copy() for k, p in be._params.items()}
        for p in be._params.values():
            p.grad = None
    return s, grads
