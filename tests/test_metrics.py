"""Metrics against hand-computed values and the official SQuAD v2 figures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from common.evaluation.citations import canonical_article, extract_citations
from common.errors import DataError, UserError
from common.evaluation.registry import score_all
from common.evaluation.metrics import (bertscore, bleu, citation_scores, default_encoder_path, length_stats,
                            normalize_answer, resolve_encoder, rouge, squad_exact, squad_f1, squad_gold,
                            squad_scores)

from conftest import SHARED  # noqa: E402

SQUAD = SHARED / "squad"
approx = pytest.approx


# ---------------------------------------------------------------- ROUGE

def test_rouge_hand_computed():
    r = rouge(["le chat dort"], ["le chat mange"])
    assert r["rouge1_f"] == approx(2 / 3)
    assert r["rouge2_f"] == approx(1 / 2)
    assert r["rougeL_f"] == approx(2 / 3)
    assert "no stemming" in r["rouge_tokenizer"]


def test_rouge_precision_recall():
    r = rouge(["le petit chat dort"], ["le chat dort"])
    assert (r["rouge1_p"], r["rouge1_r"], r["rouge1_f"]) == approx((3 / 4, 1.0, 6 / 7))
    assert (r["rouge2_p"], r["rouge2_r"], r["rouge2_f"]) == approx((1 / 3, 1 / 2, 2 / 5))
    assert (r["rougeL_p"], r["rougeL_r"], r["rougeL_f"]) == approx((3 / 4, 1.0, 6 / 7))


def test_rouge_keeps_french_accents():
    r = rouge(["l'élève lit les données"], ["élève lit des données"])
    assert r["rouge1_f"] == approx(2 / 3)  # l, élève, lit, les, données vs élève, lit, des, données
    assert rouge(["élève"], ["eleve"])["rouge1_f"] == 0.0
    assert rouge(["Élève"], ["élève"])["rouge1_f"] == 1.0
    nfd = "e\u0301le\u0300ve"  # decomposed accents
    assert rouge([nfd], ["élève"])["rouge1_f"] == 1.0


def test_rouge_corpus_is_mean_of_items():
    r = rouge(["a b", "c d"], ["a b", "x y"])
    assert r["rouge1_f"] == approx(0.5)
    assert [row["rouge1_f"] for row in r["per_item"]] == [1.0, 0.0]


# ---------------------------------------------------------------- SQuAD

def test_squad_normalisation_official_cases():
    assert normalize_answer("The Cat!") == "cat"
    assert normalize_answer("  An  apple, a day. ") == "apple day"
    assert squad_exact("cat", "The Cat!") == 1
    assert squad_exact("the theory", "theory.") == 1
    assert squad_exact("cat", "cats") == 0


def test_squad_f1_hand_computed():
    # gold -> cat sat on mat, pred -> cat sat: P = 1, R = 1/2
    assert squad_f1("the cat sat on the mat", "a cat sat") == approx(2 / 3)
    assert squad_f1("", "") == 1.0
    assert squad_f1("", "something") == 0.0
    assert squad_f1("paris", "london") == 0.0


def test_squad_scores_no_answer_string_and_split():
    r = squad_scores(["Unanswerable.", "Paris", "paris", "Denver Broncos"],
                     [[], ["Paris"], [], ["Broncos", "Denver Broncos"]])
    assert r["squad_exact"] == approx(75.0)
    assert (r["squad_HasAns_exact"], r["squad_HasAns_total"]) == (approx(100.0), 2)
    assert (r["squad_NoAns_exact"], r["squad_NoAns_f1"], r["squad_NoAns_total"]) == (50.0, 50.0, 2)
    assert r["squad_total"] == 4
    plain = squad_scores(["unanswerable"], [[]], no_answer_string=None)
    assert plain["squad_exact"] == 0.0


def test_squad_official_figures():
    dataset = json.loads((SQUAD / "dev-v2.0-sample.json").read_text(encoding="utf-8"))
    preds = json.loads((SQUAD / "reference-predictions.json").read_text(encoding="utf-8"))
    gold = squad_gold(dataset)
    r = squad_scores([preds[q] for q in gold], list(gold.values()))
    assert r["squad_total"] == 200
    assert (r["squad_HasAns_total"], r["squad_NoAns_total"]) == (96, 104)
    assert round(r["squad_exact"], 1) == 74.5
    assert round(r["squad_f1"], 1) == 78.8


# ---------------------------------------------------------------- citations

@pytest.mark.parametrize("text, expected", [
    ("Article L3121-27", {"L3121-27"}),
    ("L.1234-5", {"L1234-5"}),
    ("L1234-5", {"L1234-5"}),
    ("R. 4511-1", {"R4511-1"}),
    ("D. 123-4", {"D123-4"}),
    ("selon l'article 12 du contrat", {"12"}),
    ("Art. L. 100-1", {"L100-1"}),
    ("articles L. 100-1 et L. 100-2", {"L100-1", "L100-2"}),
    ("articles 12, 13 et 14", {"12", "13", "14"}),
    ("l’article 1er, 3° du code", {"1"}),
    ("R*211-1", {"R211-1"}),
    ("décret n° 2019-123 du 5 mars 2019; le match a 2-1", set()),
    ("Aucune référence ici.", set()),
])
def test_extract_citations(text, expected):
    assert extract_citations(text) == expected


def test_canonical_article_matches_legi_nums():
    assert canonical_article("L. 3121-27") == "L3121-27"
    assert canonical_article("R*211-1") == "R211-1"


def test_citation_metrics_hand_computed():
    preds = ["Voir l'article L. 1234-5.", "Selon l'article R. 4511-1 et L. 9999-9.",
             "Pas de citation.", "Voir article 12."]
    refs = ["Article L1234-5 du code", "article R4511-2", "Sans citation", "rien"]
    r = citation_scores(preds, refs)
    assert r["citation_accuracy"] == 0.5  # items 1 and 2 have reference citations; 1 is right
    assert (r["citation_items_scored"], r["citation_items_without_reference"]) == (2, 2)
    assert r["citation_hallucination_rate"] == 0.75  # 4 cited; R4511-1, L9999-9 and 12 in neither set
    assert r["citation_cites_any_rate"] == 0.75
    assert [row["citation_ok"] for row in r["per_item"]] == [True, False, None, None]
    assert citation_scores(["rien"], ["rien"])["citation_hallucination_rate"] is None


def test_citation_source_text_is_not_hallucination():
    r = citation_scores(["article L. 100-2"], ["article L. 100-1"], sources=["... L. 100-2 ..."])
    assert r["citation_hallucination_rate"] == 0.0
    assert r["citation_accuracy"] == 0.0


# ---------------------------------------------------------------- BLEU, lengths

def test_bleu():
    r = bleu(["the cat sat on the mat", "a dog barks loudly here"],
             ["the cat sat on the mat", "a dog barks loudly here"])
    assert r["bleu"] == approx(100.0)
    assert r["bleu_tokenize"] == "13a" and "tok:13a" in r["bleu_signature"]
    assert bleu(["x y z w"], ["a b c d"])["bleu"] == 0.0
    assert bleu(["the cat sat on the mat"], [["other words", "the cat sat on the mat"]])["bleu"] == approx(100.0)


def test_length_stats():
    r = length_stats(["a bc", "d"], ["x y z", "uv"])
    assert (r["length_pred_chars_mean"], r["length_pred_chars_median"]) == (2.5, 2.5)
    assert (r["length_pred_chars_min"], r["length_pred_chars_max"]) == (1, 4)
    assert (r["length_pred_words_mean"], r["length_pred_words_max"]) == (1.5, 2)
    assert (r["length_ref_chars_mean"], r["length_ref_words_mean"]) == (3.5, 2.0)


# ---------------------------------------------------------------- score_all

ITEMS = [
    {"id": "a", "prediction": "le chat dort", "reference": "le chat mange"},
    {"id": "b", "prediction": "unanswerable", "reference": "", "is_impossible": True},
    {"id": "c", "prediction": "Selon l'article L. 1234-5", "reference": "Article L1234-5",
     "references": ["Article L1234-5", "L. 1234-5"]},
]


def test_score_all_without_bertscore():
    r = score_all(ITEMS, ["rouge", "citations", "squad", "bleu", "length"])
    assert r["n_items"] == 3 and len(r["per_item"]) == 3
    for key in ("rouge1_f", "rougeL_f", "citation_accuracy", "squad_exact", "squad_HasAns_f1",
                "bleu", "length_pred_words_mean"):
        assert key in r
    first, second, third = r["per_item"]
    assert first["id"] == "a" and first["rougeL_f"] == approx(2 / 3)
    assert second["squad_exact"] == 100.0  # "unanswerable" on an impossible question
    assert third["citation_ok"] is True and first["citation_ok"] is None
    json.dumps(r)  # everything serialisable


def test_score_all_errors():
    with pytest.raises(UserError, match="unknown metric"):
        score_all(ITEMS, ["rouge", "meteor"])
    with pytest.raises(UserError, match="unknown metric option"):
        score_all(ITEMS, ["rouge"], encodr="x")
    with pytest.raises(DataError, match="prediction"):
        score_all([{"reference": "x"}], ["rouge"])
    with pytest.raises(DataError):
        score_all([], ["rouge"])


def test_registry_gives_the_tables_it_replaced():
    """Direction, scale, chart, sweep columns, study headlines and defaults all come from one table;
    these are the values the separate tables held (metrics, reports, sweep, study, evaluation)."""
    from types import SimpleNamespace as NS

    from common.evaluation.registry import (METRICS, chart_points, default_metrics, headline_keys, metric_info,
                                        study_headlines)
    assert METRICS == ("rouge", "bertscore", "citations", "squad", "bleu", "classification", "answer_form", "length")
    assert {k: chart_points(k) for k in ("rouge1_f", "rouge2_f", "rougeL_f", "bertscore_f1", "citation_accuracy",
                                         "citation_cites_any_rate", "squad_exact", "squad_f1", "bleu")} == \
        {**dict.fromkeys(("rouge1_f", "rouge2_f", "rougeL_f", "bertscore_f1", "citation_accuracy",
                          "citation_cites_any_rate"), 100.0), "squad_exact": 1.0, "squad_f1": 1.0, "bleu": 1.0}
    assert chart_points("rouge1_p") is None and chart_points("test_loss") is None
    assert headline_keys(list(METRICS)) == ["rouge1_f", "rouge2_f", "rougeL_f", "bertscore_f1", "citation_accuracy",
                                            "citation_hallucination_rate", "squad_exact", "squad_f1", "bleu",
                                            "class_accuracy", "class_macro_f1", "length_pred_words_mean"]
    assert (metric_info("rouge2_p"), metric_info("citation_hallucination_rate"), metric_info("squad_NoAns_f1"),
            metric_info("citation_echo_rate"), metric_info("truncated_rate"), metric_info("val_loss")) == \
        ((1, 100), (-1, 100), (1, 1), (0, 100), (-1, 100), (-1, 1))
    assert metric_info("n_items") is None and metric_info("bertscore_layer") is None
    assert [(h.key, h.label, h.subset, h.scale) for h in study_headlines(["rouge", "citations", "length"])] == \
        [("rougeL_f", "ROUGE-L", None, 100.0), ("citation_ok", "citation accuracy", None, 100.0)]
    squad, legal, text = ([NS(meta={"meta": meta})] for meta in ({"is_impossible": False}, {"article_num": "1"}, {}))
    assert [default_metrics(x) for x in (squad, legal, text)] == [
        ["squad", "bleu", "bertscore", "length"], ["rouge", "bertscore", "citations", "bleu", "length"],
        ["rouge", "bleu", "bertscore", "length"]]
    assert [default_metrics(x, job="study") for x in (squad, legal, text)] == [
        ["squad", "length"], ["rouge", "citations", "length"], ["rouge", "length"]]


def test_metrics_module_does_not_import_torch():
    code = "import sys, common.evaluation.metrics, common.evaluation.registry, common.evaluation.reports; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# ---------------------------------------------------------------- BERTScore

def test_bertscore_default_encoder_identity_and_paraphrase():
    r = bertscore(["The cat sleeps on the mat.", "The cat sleeps on the mat.",
                   "The cat sleeps on the mat.", ""],
                  ["The cat sleeps on the mat.", "A cat is sleeping on the rug.",
                   "Stock markets fell sharply today.", "x"])
    f1 = [row["bertscore_f1"] for row in r["per_item"]]
    assert f1[0] == approx(1.0, abs=1e-5)
    assert f1[1] > f1[2]
    assert f1[3] == 0.0  # empty prediction
    assert r["bertscore_layer"] == 6 and r["bertscore_rescaled"] is False
    assert Path(r["bertscore_encoder"]) == default_encoder_path()


def test_bertscore_encoder_resolution(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not available offline"):
        bertscore(["a"], ["a"], encoder="camembert-base-not-cached-anywhere")
    with pytest.raises(UserError, match="out of range"):
        bertscore(["a"], ["a"], layer=7)
    import huggingface_hub.constants as hf_constants

    snap = tmp_path / "models--camembert-base" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text('{"num_hidden_layers": 12}')
    import numpy as np
    from safetensors.numpy import save_file
    save_file({"w": np.zeros(2, np.float32)}, str(snap / "model.safetensors"))  # encoders load safetensors only
    (tmp_path / "models--camembert-base" / "refs").mkdir()
    (tmp_path / "models--camembert-base" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    assert resolve_encoder("camembert-base") == snap
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="not available offline"):
        resolve_encoder("camembert-base")


def test_opening_article_reads_the_reference_heading_only():
    """The legi references' heading form, in canonical form; a citation elsewhere is not the form."""
    from common.evaluation.citations import opening_article
    assert opening_article("Article R112-4 du Code des relations entre le public et l'administration. Il …") == "R112-4"
    assert opening_article("  Article L. 100-1 du Code du travail : « … »") == "L100-1"
    assert opening_article("Article 1er du Code civil") == "1"
    assert opening_article("L'article R112-4 du Code des relations …") is None        # not the opening
    assert opening_article("Article R112-4 : l'accusé de réception …") is None          # no "du Code"
    assert opening_article("Selon l'article L100-1 du Code, …") is None
    assert opening_article("") is None


def test_reference_opening_is_the_heading_and_its_connector():
    from common.evaluation.citations import opens_like, reference_opening, repeats_heading
    title = "Article R112-4 du Code des relations entre le public et l'administration"
    assert [reference_opening(title + tail) for tail in (". Il figure dans …", ", en substance : …",
                                                         " :\n« L'accusé …", " — emplacement : …")] == \
        [title + ". Il", title + ", en", title + " : «", title + " — emplacement"]
    assert reference_opening("L'article R112-4 dit …") is None
    assert opens_like(title + " :  « L'accusé", title + " : «")
    assert not opens_like(title + " :\n- L'article R112-4 du Code …", title + " : «")
    assert repeats_heading(title + " :\n- L'article R. 112-4 du Code …")
    assert not repeats_heading(title + ". Il renvoie à l'article L. 112-3.") and not repeats_heading("L'article R112-4 …")


def test_answer_form_scores_count_the_form_and_the_heading():
    """form_rate: openings as the reference's (heading and connector); form_heading_rate: the heading
    alone; an item whose reference lacks the heading is left out."""
    from common.evaluation.registry import score_all
    head = "Article L100-1 du Code des relations entre le public et l'administration"
    ref = head + ". Il figure dans la division « Dispositions préliminaires »."
    items = [{"prediction": head + ". Il figure dans …", "reference": ref},
             {"prediction": head + " :\n- L'article L100-1 du Code des relations …", "reference": ref},
             {"prediction": "Article L100-2 du Code des relations entre le public et l'administration. Il", "reference": ref},
             {"prediction": "L'article L100-1 dit que …", "reference": ref},
             {"prediction": head + ". Il", "reference": "Oui."}]
    s = score_all(items, ["answer_form"])
    assert (s["form_rate"], s["form_heading_rate"], s["form_repeat_rate"], s["form_items_scored"]) == \
        (1 / 4, 3 / 4, 1 / 4, 4)
    assert [(r["form_ok"], r["form_heading"], r["form_repeats"]) for r in s["per_item"]] == \
        [(True, True, False), (False, True, True), (False, True, False), (False, False, False), (None, None, None)]
