"""generate: sampling with the same semantics and draws on both backends, streaming, multi-turn
chat fed through stdin, and the base model's answer beside the adapter's."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import chat_rows, run_cli, tiny_config, write_jsonl

from common.training.sampling import Sampler, Sampling


def test_sampler_follows_temperature_and_top_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert Sampler(Sampling())(logits) == 0  # temperature 0: argmax
    draws = [Sampler(Sampling(1.0, 1.0, seed))(logits) for seed in range(4000)]
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.025)
    # top-p 0.75: the smallest set reaching 0.75 is {0, 1}, renormalised to 0.625 / 0.375
    s = Sampler(Sampling(1.0, 0.75, 7))
    draws = [s(logits) for _ in range(4000)]
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert freq[2] == freq[3] == 0 and abs(freq[0] - 0.625) < 0.03
    # temperature 0.5 sharpens: p ∝ p^2
    s = Sampler(Sampling(0.5, 1.0, 3))
    freq = np.bincount([s(logits) for _ in range(4000)], minlength=4) / 4000
    sharp = np.array([0.5, 0.3, 0.15, 0.05]) ** 2
    np.testing.assert_allclose(freq, sharp / sharp.sum(), atol=0.025)
    assert Sampler(Sampling(1.0, 0.01, 0))(logits) == 0  # a tiny nucleus keeps the top token only


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory):
    from jobs.trainer import train
    root = tmp_path_factory.mktemp("gen")
    data = write_jsonl(root / "train.jsonl", chat_rows(12))
    train(tiny_config(tiny_model, data, root / "run", training={"steps": 4}), "torch", echo=lambda *a, **k: None)
    return root / "run" / "adapter"


def test_same_seed_same_sampled_text_on_both_backends(tiny_model, adapter):
    from jobs.session import answer, open_model
    msgs = [{"role": "user", "content": "Que dit l'article L101-1 ?"}]
    texts = {}
    for backend in ("mlx", "torch"):
        opened = open_model(backend, str(tiny_model), adapter=adapter)
        texts[backend] = [answer(opened, msgs, 16, sampling=Sampling(0.9, 0.95, seed)) for seed in (0, 1, 2)]
        greedy = answer(opened, msgs, 16)
        assert answer(opened, msgs, 16, sampling=Sampling(0.0, 1.0, 5)) == greedy
    assert texts["mlx"] == texts["torch"]
    assert len(set(texts["torch"])) > 1  # the seed matters


def test_stream_prints_the_same_answer(tiny_model, adapter):
    args = ["generate", "--backend", "torch", "--model", tiny_model, "--adapter", adapter, "-p",
            "Que dit l'article L102-1 ?", "--max-new-tokens", "12", "-t", "0.7", "--seed", "4"]
    plain, streamed = run_cli(*args, "--no-stream"), run_cli(*args, "--stream")
    assert plain.exit_code == 0 and streamed.exit_code == 0, (plain.output, streamed.output)
    assert plain.output == streamed.output and len(plain.output.splitlines()[1]) > 3


def test_chat_keeps_the_conversation(tiny_model, adapter):
    from click.testing import CliRunner
    import cli
    from jobs.session import answer, open_model
    r = CliRunner().invoke(cli.cli, ["generate", "--backend", "mlx", "--model", str(tiny_model), "--adapter",
                                     str(adapter), "--chat", "--max-new-tokens", "10"],
                           input="Que dit l'article L100-1 ?\nEt l'article L103-1 ?\n/exit\n", obj={})
    assert r.exit_code == 0, r.output
    label = adapter.parent.name
    replies = [line.split(f"{label}> ", 1)[1] for line in r.output.splitlines() if f"{label}> " in line]
    assert len(replies) == 2
    opened = open_model("mlx", str(tiny_model), adapter=adapter)
    u1, u2 = ({"role": "user", "content": c} for c in ("Que dit l'article L100-1 ?", "Et l'article L103-1 ?"))
    a1 = answer(opened, [u1], 10)
    a2 = answer(opened, [u1, {"role": "assistant", "content": a1}, u2], 10)
    assert [x.strip() for x in replies] == [a1, a2]
    assert a2 != answer(opened, [u2], 10)  # the second turn saw the first exchange


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_base_answer_beside_the_adapters(tiny_model, adapter, backend):
    args = ["generate", "--backend", backend, "--model", tiny_model, "-p", "Que dit l'article L104-1 ?",
            "--max-new-tokens", "10", "--no-stream"]
    both = run_cli(*args, "--adapter", f"tuned={adapter}", "--base")
    base = run_cli(*args)
    tuned = run_cli(*args, "--adapter", adapter)
    assert both.exit_code == base.exit_code == tuned.exit_code == 0, both.output
    lines = both.output.splitlines()
    assert lines[0].startswith(">>> [base]") and lines[3].startswith(">>> [tuned]")
    assert lines[1] == base.output.splitlines()[1] and lines[4] == tuned.output.splitlines()[1]
    assert lines[1] != lines[4]


def test_mlx_batched_greedy_equals_one_at_a_time(tiny_model, adapter):
    """8 prompts of different lengths (1 to 40 tokens) in one batch: each answer is the one-at-a-time
    greedy answer, token for token, including an answer cut at its end-of-turn token."""
    from jobs.session import open_model
    be = open_model("mlx", str(tiny_model), adapter=adapter).backend
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 300, size=n).tolist() for n in (3, 17, 5, 40, 9, 1, 23, 12)]
    free = [be.generate(p, 12, [-1]) for p in prompts]
    stop = free[3][6]                                # a token some answer produces: an end-of-turn id
    one = [be.generate(p, 12, [stop]) for p in prompts]
    assert len(one[3]) == next(i for i, t in enumerate(free[3]) if t == stop) < 12
    assert be.generate_batch(prompts, 12, [stop]) == one


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_several_greedy_prompts_batched_give_the_one_at_a_time_text(tiny_model, adapter, backend, monkeypatch):
    """`generate -p A -p B ...` without streaming answers every prompt in batches (the backend's
    generate_batch is called, 9 prompts → batches of 8 and 1); the text equals the streamed,
    one-prompt-at-a-time output, for the adapter and the base beside it."""
    from backends import get_backend
    prompts = [f"Que dit l'article L{100 + i}-{i % 3 + 1} ?" + " Précisez." * (i % 4) for i in range(9)]
    args = ["generate", "--backend", backend, "--model", tiny_model, "--adapter", f"tuned={adapter}", "--base",
            "--max-new-tokens", "10"] + [a for p in prompts for a in ("-p", p)]
    one = run_cli(*args, "--stream")
    cls = get_backend(backend)
    calls = []
    real = cls.generate_batch
    monkeypatch.setattr(cls, "generate_batch", lambda self, ps, *a: calls.append(len(ps)) or real(self, ps, *a))
    batched = run_cli(*args, "--no-stream")
    assert one.exit_code == batched.exit_code == 0, (one.output, batched.output)
    assert calls == [8, 1, 8, 1]          # base, then the adapter
    assert batched.output == one.output and one.output.count(">>> [tuned]") == 9
