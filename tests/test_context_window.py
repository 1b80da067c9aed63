"""A prompt past the model's context (max_position_embeddings) is refused in one line before
generating, in `generate --prompt` and in `--chat` (where the chat goes on); a --max-new-tokens
that would run past the context is capped so prompt + answer fit, and said in one line."""
from __future__ import annotations

from click.testing import CliRunner

from error_rows import expect_error
from helpers import run_cli

LONG = "mot " * 600  # more than the tiny model's 512 positions


def test_long_prompt_is_refused_before_any_answer(tiny_model):
    r = run_cli("generate", "--backend", "torch", "--model", tiny_model, "-p", "hi", "-p", LONG)
    line = expect_error(r)
    n = int(line.split("the prompt is ")[1].split()[0])
    assert n > 512 and line == (f"error: --prompt: the prompt is {n} tokens, and the model's context holds 512 "
                                "(max_position_embeddings) with the answer included — fix: shorten the prompt, or "
                                "use a model with a longer context")
    assert ">>>" not in r.output


def test_huge_max_new_tokens_is_capped_to_the_context(tiny_model):
    from jobs.session import fit_context, open_model, prompt_ids
    r = run_cli("generate", "--backend", "torch", "--model", tiny_model, "-p", "hi", "--max-new-tokens", "1000000")
    assert r.exit_code == 0, r.output
    opened = open_model("torch", str(tiny_model))
    n = len(prompt_ids(opened, [{"role": "user", "content": "hi"}]))
    assert (f"[twinlora] note: --max-new-tokens 1000000 capped to {512 - n}: the prompt is {n} tokens and the "
            "model's context 512 (max_position_embeddings)") in r.output
    assert fit_context(opened, n, 1_000_000, "--prompt", "") == 512 - n
    assert fit_context(opened, n, 64, "--prompt", "") == 64  # within the context: unchanged, nothing said
    out = opened.backend.generate(prompt_ids(opened, [{"role": "user", "content": "hi"}]), 512 - n, [-1])
    assert len(out) == 512 - n  # the whole budget runs without an error at the last position


def test_chat_refuses_the_turn_and_goes_on(tiny_model):
    import cli
    r = CliRunner().invoke(cli.cli, ["generate", "--backend", "torch", "--model", str(tiny_model), "--chat",
                                     "--max-new-tokens", "2"], input=f"{LONG}\nhi\n/exit\n", obj={})
    assert r.exit_code == 0, r.output
    errors = [l for l in r.output.splitlines() if "error:" in l]
    assert len(errors) == 1 and "error: --chat: the prompt is" in errors[0], r.output
    assert errors[0].endswith("— fix: send a shorter message, or /reset the history")
    assert r.output.count("base> ") == 1  # the long turn was not answered, "hi" was


def _eval_data(path, *user_texts):
    from helpers import write_jsonl
    return write_jsonl(path, [{"prompt": t, "completion": "Réponse."} for t in user_texts])


def test_eval_refuses_a_record_past_the_context_before_any_answer(tiny_model, tmp_path):
    """eval (batched on torch, one by one on MLX) goes through generate's check: the record is named."""
    data = _eval_data(tmp_path / "test.jsonl", "hi", LONG, "ho")
    for backend in ("torch", "mlx"):
        r = run_cli("eval", "--backend", backend, "--model", tiny_model, "--data", data, "--output",
                    tmp_path / "out", "--metrics", "rouge", "--max-new-tokens", "4")
        line = expect_error(r, f"error: {data}:2: the prompt is ", "(max_position_embeddings) with the answer included")
        assert line.endswith("— fix: shorten that record's prompt or drop the record, or use a model with a longer "
                             "context"), line
        assert "[eval] 1/" not in r.output and not (tmp_path / "out").exists()  # nothing generated, nothing written


def test_eval_caps_the_answer_of_a_long_record_to_the_context(tiny_model, tmp_path):
    import json

    from common.data.formats import load_examples
    from common.training.tokenize import Tokenizer
    from jobs.session import open_model
    opened = open_model("torch", str(tiny_model))
    long_prompt = "mot " * 110
    probe = _eval_data(tmp_path / "probe.jsonl", long_prompt)
    n = len(Tokenizer(opened.tokenizer, "chat", None).encode_prompt(load_examples(probe)[0]))
    assert 300 < n < 500
    data = _eval_data(tmp_path / "test.jsonl", "hi", long_prompt)
    asked = 512 - n + 7  # the long record's answer may take 512 - n tokens, the short one all it asked
    r = run_cli("eval", "--backend", "torch", "--model", tiny_model, "--data", data, "--output", tmp_path / "out",
                "--metrics", "rouge", "--max-new-tokens", asked)
    assert r.exit_code == 0, r.output
    assert (f"[eval] note: --max-new-tokens {asked} capped to {512 - n}: the prompt is {n} tokens and the model's "
            f"context 512 (max_position_embeddings) ({data}:2)") in r.output
    rows = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert rows[1]["prompt_tokens"] == n and rows[1]["prompt_tokens"] + rows[1]["answer_tokens"] <= 512
    assert rows[1]["scores"]["truncated"] == (rows[1]["answer_tokens"] == 512 - n)
    assert rows[0]["scores"]["truncated"] == (rows[0]["answer_tokens"] == asked)


def test_parity_fits_its_prompts_to_the_context(tiny_model):
    """parity generates on both backends: a prompt past the context is refused before any logits,
    a huge --max-new-tokens (accepted: a budget) is capped so prompt + answer fit."""
    r = run_cli("parity", "--model", tiny_model, "--prompt", "hi", "--prompt", LONG)
    expect_error(r, "error: --prompt: the prompt is ", "the model's context holds 512")
    assert "max|Δlogit|" not in r.output
    r = run_cli("parity", "--model", tiny_model, "--prompt", "hi", "--max-new-tokens", "1000000")
    assert r.exit_code in (0, 1) and "Traceback" not in r.output, r.output
    assert "[twinlora] note: --max-new-tokens 1000000 capped to " in r.output, r.output
