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
