"""The eval job: generate answers for a test split with a base model (+ adapter) on either
backend, then score them in the shared layer, so the numbers do not depend on the backend.

By default an adapter is evaluated with the template and system prompt it was trained with
(twinlora.json), `--limit N` draws a seeded random sample (not the first N records, which in a
prepared split are often several questions about one source), answers cut by the token limit are
flagged, and the test set's loss and perplexity under the model are reported beside the
generation metrics (generation metrics on a few items are noisy; the loss uses every token)."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from common.data.formats import Example, load_examples
from common.training.tokenize import Tokenizer


def _item(ex: Example, prompt: str, prediction: str, i: int) -> dict:
    meta = ex.meta.get("meta", ex.meta)
    item = {"id": meta.get("id", i), "prompt": prompt, "reference": ex.completion.strip(),
            "prediction": prediction.strip(), "source": ex.source,
            # the user's own words: an article number echoed from here is not a correct citation
            "question": "\n".join(m["content"] for m in ex.messages[:-1] if m.get("role") == "user")
            if ex.messages else ""}
    if "is_impossible" in meta:
        item["is_impossible"] = bool(meta["is_impossible"])
        item["references"] = list(meta.get("answers") or [])
    if isinstance(meta.get("labels"), list):  # a classification record: its label set and gold label
        item["labels"] = [str(x) for x in meta["labels"]]
        item["label"] = str(meta.get("label") or item["reference"])
    if "article_text" in meta:
        item["source"] = meta["article_text"]
    elif ex.messages:
        item["source"] = "\n".join(m["content"] for m in ex.messages[:-1])
    return item


def generate_items(opened, examples: list[Example], template: str, system_prompt: str | None,
                   max_new_tokens: int, batch_size: int = 8, echo=print) -> list[dict]:
    """Greedy answers for every example; batched where the backend generates in batches. Every
    prompt is encoded and fitted to the context first (`answer_budgets`)."""
    from jobs.session import eos_ids
    tk = Tokenizer(opened.tokenizer, template, system_prompt)
    stops = eos_ids(opened.tokenizer)
    be = opened.backend
    step = batch_size if be.capabilities.batched_generation and batch_size > 1 else 1
    all_prompts = [tk.encode_prompt(ex) for ex in examples]
    all_budgets = answer_budgets(opened, examples, all_prompts, max_new_tokens, echo)
    items, t0 = [], time.time()
    for start in range(0, len(examples), step):
        chunk, prompts = examples[start: start + step], all_prompts[start: start + step]
        budgets = all_budgets[start: start + step]
        t_chunk = time.perf_counter()
        outs = generate_chunk(be, prompts, budgets, stops, step > 1)
        per_answer = (time.perf_counter() - t_chunk) / len(chunk)  # a batch's time, shared by its answers
        for j, (ex, ids, out, budget) in enumerate(zip(chunk, prompts, outs, budgets)):
            items.append(_item(ex, opened.tokenizer.decode(ids),
                               opened.tokenizer.decode(out, skip_special_tokens=True), start + j))
            # no end-of-turn within the budget: the answer was cut by --max-new-tokens (or the context)
            items[-1].update(truncated=len(out) >= budget, prompt_tokens=len(ids),
                             answer_tokens=len(out), seconds=round(per_answer, 4))
        done = len(items)
        rate = done / max(time.time() - t0, 1e-9)
        echo(f"\r[eval] {done}/{len(examples)}  {rate:.2f} items/s  ETA {int((len(examples) - done) / rate)}s", nl=False)
    echo("")
    return items


EVAL_CONTEXT_FIX = "shorten that record's prompt or drop the record, or use a model with a longer context"


def answer_budgets(opened, examples: list[Example], prompts: list[list[int]], max_new_tokens: int,
                   echo=print) -> list[int]:
    """Each answer's token budget so that prompt + answer fit the model's context, by the check
    `generate` makes (jobs.session.fit_context): a record whose prompt fills the context is refused
    before any answer is generated; budgets cut short are said in one line."""
    from jobs.session import fit_context
    capped: list[str] = []
    budgets = [fit_context(opened, len(ids), max_new_tokens, ex.source, EVAL_CONTEXT_FIX, note=capped.append)
               for ex, ids in zip(examples, prompts)]
    if capped:
        first = next(ex.source for ex, b in zip(examples, budgets) if b < max_new_tokens)
        more = f"; {len(capped) - 1} more record(s) capped alike" if len(capped) > 1 else ""
        echo(f"{capped[0].replace('[twinlora]', '[eval]')} ({first}{more})")
    return budgets


def generate_chunk(be, prompts: list[list[int]], budgets: list[int], stops: list[int], batched: bool) -> list:
    """One batched call when the chunk's answers share one budget; one prompt at a time when the
    context cut some budgets (a batch has one length, and past the context a row is not defined)."""
    if batched and len(set(budgets)) == 1:
        return be.generate_batch(prompts, budgets[0], stops)
    return [be.generate(p, b, stops) for p, b in zip(prompts, budgets)]


def generate_samples(backend: str, model: str, adapter: Path | None, examples: list[Example], max_new_tokens: int,
                     template: str | None, system_prompt: str | None, temperature: float, n: int,
                     seed: int = 0) -> list[list[str]]:
    """`n` sampled answers per example (seeds seed … seed+n−1, top-p 1), prompted as `run_eval`
    prompts: the adapter's recorded template and system prompt unless given."""
    from common.training.sampling import Sampler, Sampling
    from jobs.session import eos_ids, open_model
    opened = open_model(backend, model, adapter=adapter)
    template, system_prompt, _ = resolve_prompting(opened, template, system_prompt)
    tk, stops = Tokenizer(opened.tokenizer, template, system_prompt), eos_ids(opened.tokenizer)
    prompts = [tk.encode_prompt(ex) for ex in examples]
    out = []
    for ids, budget in zip(prompts, answer_budgets(opened, examples, prompts, max_new_tokens)):
        out.append([opened.tokenizer.decode(opened.backend.generate(
            ids, budget, stops, sampler=Sampler(Sampling(temperature, 1.0, seed + s).check())),
            skip_special_tokens=True).strip() for s in range(n)])
    return out


def sample(examples: list[Example], limit: int | None, seed: int) -> tuple[list[Example], list[int]]:
    """A seeded random sample of `limit` examples, kept in file order (all when limit is None)."""
    if not limit or limit >= len(examples):
        return examples, list(range(len(examples)))
    picked = sorted(np.random.default_rng(seed).choice(len(examples), size=limit, replace=False).tolist())
    return [examples[i] for i in picked], picked


def test_loss(opened, examples: list[Example], template: str, system_prompt: str | None,
              mask_prompt: bool = True, max_length: int = 2048, batch_size: int = 4) -> dict:
    """Token-weighted loss of the references under the model (the training loss, on the test
    split) and its perplexity exp(loss)."""
    from common.training.batching import eval_batches
    tk = Tokenizer(opened.tokenizer, template, system_prompt, mask_prompt, max_length, "truncate")
    data = [t for t in (tk.encode(ex) for ex in examples) if t is not None]
    total, n = 0.0, 0
    for b in eval_batches(data, batch_size, opened.tokenizer.pad_token_id):
        s, k = opened.backend.eval_loss(b)
        total, n = total + s, n + k
    loss = total / n if n else None
    return {"test_loss": loss, "test_perplexity": math.exp(loss) if loss is not None else None,
            "test_loss_tokens": n}


def resolve_prompting(opened, template: str | None, system_prompt: str | None) -> tuple[str, str | None, str]:
    """(template, system prompt, where they came from): the flags win, then what the adapter was
    trained with (twinlora.json), then the tokenizer's chat template and no system prompt."""
    from common.adapters.format import recorded_prompting
    rec_template, rec_system = recorded_prompting(getattr(opened, "adapter_dir", None), opened.meta)
    origin = "flags" if template is not None else ("adapter" if rec_template else "default")
    return (template or rec_template or "chat",
            system_prompt if system_prompt is not None else rec_system, origin)


def check_eval_examples(examples: list[Example]) -> None:
    """Eval needs a question and a reference answer per record, and `meta` (if any) an object."""
    from common.errors import DataError
    for ex in examples:
        if ex.text is not None:
            raise DataError('a {"text"} record has no question and reference answer to evaluate', where=ex.source,
                            fix="evaluate prompt/completion, Alpaca or messages records (e.g. a prepared test.jsonl)")
        if "meta" in ex.meta and not isinstance(ex.meta["meta"], dict):
            raise DataError(f'"meta" must be an object, got {type(ex.meta["meta"]).__name__}', where=ex.source,
                            fix='write "meta" as a JSON object, e.g. {"id": 1}, or drop it')


def run_eval(*, backend: str, model: str, adapter: str | None, data: str, out_dir: Path, metrics: list[str] | None,
             limit: int | None, max_new_tokens: int, template: str | None, system_prompt: str | None,
             metric_options: dict, label: str | None, batch_size: int = 8, echo=print, seed: int = 0) -> dict:
    from common.evaluation.registry import check_metric_names, default_metrics, score_all
    from common.evaluation.reports import write_eval_report
    from jobs.session import open_model

    from common.runs.ownership import check_output_dir
    if metrics:
        check_metric_names(metrics, metric_options)  # before the (slow) generation
    check_output_dir(out_dir, "eval", "--output", inputs=[data, adapter])
    all_examples = load_examples(data)
    examples, picked = sample(all_examples, limit, seed)
    check_eval_examples(examples)
    metrics = metrics or default_metrics(examples)
    if "bertscore" in metrics:
        from common.evaluation.metrics import resolve_encoder
        resolve_encoder(metric_options.get("encoder"))  # its directory is checked before generating
    opened = open_model(backend, model, adapter=adapter)
    template, system_prompt, origin = resolve_prompting(opened, template, system_prompt)
    if origin == "adapter" and (template != "chat" or system_prompt):
        echo(f"[eval] template {template!r}" + (f", system prompt {system_prompt!r}" if system_prompt else "")
             + " as recorded with the adapter (--template / --system override)")
    items = generate_items(opened, examples, template, system_prompt, max_new_tokens, batch_size, echo)
    batched = batch_size if opened.backend.capabilities.batched_generation else 1
    scores = score_all(items, metrics, **metric_options)
    cut = [it["id"] for it in items if it["truncated"]]
    scores.update(n_truncated=len(cut), truncated_rate=len(cut) / len(items))
    for row, it in zip(scores["per_item"], items):
        row["truncated"] = it["truncated"]
    if cut:
        echo(f"[eval] warning: {len(cut)} of {len(items)} answers reached --max-new-tokens={max_new_tokens} "
             f"without ending (cut; flagged in predictions.jsonl): raise --max-new-tokens to score whole answers")
    mask = (opened.meta or {}).get("mask_prompt", True)
    from common.models.resolve import read_model_config
    max_length = (((opened.meta or {}).get("config") or {}).get("data", {}).get("max_length")  # as trained
                  or min(2048, int(read_model_config(opened.model_dir).get("max_position_embeddings") or 2048)))
    scores.update(test_loss(opened, examples, template, system_prompt, mask, max_length))
    settings = {"backend": backend, "model": model, "adapter": adapter, "data": data, "n_items": len(items),
                "sample": {"limit": limit, "seed": seed, "of": len(all_examples),
                           "how": "seeded random sample, file order" if len(picked) < len(all_examples) else "all"},
                "generation": {"decoding": "greedy", "max_new_tokens": max_new_tokens, "stop": "EOS / end of turn",
                               "batch_size": batched},
                "template": template, "system_prompt": system_prompt, "prompting_from": origin, "label": label}
    write_eval_report(out_dir, scores, items, settings, title=label or f"{backend} eval of {adapter or model}")
    return scores


def eval_to_dir(output: str, *, model, adapter: str | None, echo=print, **request) -> dict:
    """`cli.py eval`: the base the adapter records unless --model, the evaluation under the output's
    lock, then the headline numbers and where the report is."""
    import json
    from common.runs.lock import OutputLock
    from jobs.session import base_for
    model = base_for(model, adapter, lambda m: echo(m, err=True))
    with OutputLock(output):
        scores = run_eval(model=model, adapter=adapter, out_dir=Path(output), echo=echo, **request)
    shown = {k: v for k, v in scores.items() if k != "per_item" and isinstance(v, (int, float))}
    echo(json.dumps(shown, indent=2))
    echo(f"[twinlora] report: {Path(output) / 'report.md'}")
    return scores
