"""The eval job: generate answers for a test split with a base model (+ adapter) on either
backend, then score them in the shared layer, so the numbers do not depend on the backend."""
from __future__ import annotations

import time
from pathlib import Path

from common.data.formats import Example, load_examples
from common.tokenize import Tokenizer


def default_metrics(examples: list[Example]) -> list[str]:
    """Pick the recipe's metrics from what the records carry."""
    meta = examples[0].meta.get("meta", examples[0].meta)
    if "is_impossible" in meta:
        return ["squad", "bleu", "bertscore", "length"]
    if "article_num" in meta:
        return ["rouge", "bertscore", "citations", "bleu", "length"]
    return ["rouge", "bleu", "bertscore", "length"]


def _item(ex: Example, prompt: str, prediction: str, i: int) -> dict:
    meta = ex.meta.get("meta", ex.meta)
    item = {"id": meta.get("id", i), "prompt": prompt, "reference": ex.completion.strip(),
            "prediction": prediction.strip(), "source": ex.source}
    if "is_impossible" in meta:
        item["is_impossible"] = bool(meta["is_impossible"])
        item["references"] = list(meta.get("answers") or [])
    if "article_text" in meta:
        item["source"] = meta["article_text"]
    elif ex.messages:
        item["source"] = "\n".join(m["content"] for m in ex.messages[:-1])
    return item


def generate_items(opened, examples: list[Example], template: str, system_prompt: str | None,
                   max_new_tokens: int, batch_size: int = 8, echo=print) -> list[dict]:
    """Greedy answers for every example; batched where the backend has `generate_batch`."""
    from common.session import eos_ids
    tk = Tokenizer(opened.tokenizer, template, system_prompt)
    stops = eos_ids(opened.tokenizer)
    be = opened.backend
    step = batch_size if hasattr(be, "generate_batch") and batch_size > 1 else 1
    items, t0 = [], time.time()
    for start in range(0, len(examples), step):
        chunk = examples[start: start + step]
        prompts = [tk.encode_prompt(ex) for ex in chunk]
        outs = be.generate_batch(prompts, max_new_tokens, stops) if step > 1 else \
            [be.generate(prompts[0], max_new_tokens, stops)]
        for j, (ex, ids, out) in enumerate(zip(chunk, prompts, outs)):
            items.append(_item(ex, opened.tokenizer.decode(ids),
                               opened.tokenizer.decode(out, skip_special_tokens=True), start + j))
        done = len(items)
        rate = done / max(time.time() - t0, 1e-9)
        echo(f"\r[eval] {done}/{len(examples)}  {rate:.2f} items/s  ETA {int((len(examples) - done) / rate)}s", nl=False)
    echo("")
    return items


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
             limit: int | None, max_new_tokens: int, template: str, system_prompt: str | None,
             metric_options: dict, label: str | None, batch_size: int = 8, echo=print) -> dict:
    from common.metrics import check_metric_names, score_all
    from common.reports import write_eval_report
    from common.session import open_model

    from common.ownership import check_output_dir
    if metrics:
        check_metric_names(metrics, metric_options)  # before the (slow) generation
    check_output_dir(out_dir, "eval", "--output", inputs=[data, adapter])
    examples = load_examples(data)[:limit] if limit else load_examples(data)
    check_eval_examples(examples)
    metrics = metrics or default_metrics(examples)
    if "bertscore" in metrics:
        from common.metrics import resolve_encoder
        resolve_encoder(metric_options.get("encoder"))  # its directory is checked before generating
    opened = open_model(backend, model, adapter=adapter)
    items = generate_items(opened, examples, template, system_prompt, max_new_tokens, batch_size, echo)
    batched = batch_size if hasattr(opened.backend, "generate_batch") else 1
    scores = score_all(items, metrics, **metric_options)
    settings = {"backend": backend, "model": model, "adapter": adapter, "data": data, "n_items": len(items),
                "generation": {"decoding": "greedy", "max_new_tokens": max_new_tokens, "stop": "EOS / end of turn",
                               "batch_size": batched},
                "template": template, "label": label}
    write_eval_report(out_dir, scores, items, settings, title=label or f"{backend} eval of {adapter or model}")
    return scores
