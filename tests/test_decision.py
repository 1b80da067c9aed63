"""The decision study's measures, each against an answer known beforehand: the multiple-choice
scorer and the prose perplexity against log-likelihoods computed by hand with transformers on the
tiny model (both backends), the KL drift of an identical and of a perturbed adapter, k-shot prompts
that never hold a test item, every failure category from a crafted answer, accuracy and macro-F1
on a crafted confusion matrix, the legi-classify recipe; then a whole study with every option on
both backends (resumes what an interruption left, refuses other settings)."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from helpers import run_cli, tiny_config, write_jsonl

from common.evaluation import forgetting as fg
from common.errors import ConfigError
from jobs import general_checks

BACKENDS = ["torch", "mlx"]
MCQ = [{"id": "m1", "question": "What colour is the sky on a clear day?", "choices": ["blue", "green", "red", "a loud noise"], "answer": 0},
       {"id": "m2", "question": "How many legs has a spider?", "choices": ["8", "six", "four", "ten"], "answer": 0},
       {"id": "m3", "question": "Which is a fruit?", "choices": ["apple", "stone", "car", "cloud"], "answer": 0}]
PROSE = {"en": "The river runs past the old mill, and the miller counts his sacks of flour every evening. " * 6,
         "fr": "La rivière passe devant le vieux moulin et le meunier compte ses sacs chaque soir. " * 6,
         "de": "Der Fluss fließt an der alten Mühle vorbei, und der Müller zählt jeden Abend seine Säcke. " * 6}


def _general() -> fg.General:
    return fg.General(prose=PROSE, prompts=[], mcq=MCQ)


@pytest.fixture(scope="module")
def hf(tiny_model):
    """The tiny model through plain transformers: the hand computation's reference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), torch_dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(tiny_model))


def _hand_logprobs(model, ids: list[int]) -> np.ndarray:
    """log p(ids[t] | ids[:t]) for t ≥ 1 straight from transformers, in float64."""
    import torch
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits[:-1], dim=-1)
    return lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()


@pytest.fixture(scope="module", params=BACKENDS)
def opened(request, tiny_model):
    from jobs.session import open_model
    return open_model(request.param, str(tiny_model))


# ---------------------------------------------------------------- multiple choice, perplexity

def test_mc_scorer_matches_hand_loglikelihoods(opened, hf):
    from jobs.general_checks import mcq_scores
    model, tok = hf
    rows = mcq_scores(opened.backend, opened.tokenizer, _general())
    tol = 1e-4 if opened.backend.name == "torch" else 2e-3
    for item, row in zip(MCQ, rows):
        context = f"Question: {item['question']}\nAnswer:"
        hand = []
        for choice in item["choices"]:
            n_ctx = len(tok(context)["input_ids"])
            whole = tok(context + " " + choice)["input_ids"]
            hand.append(float(_hand_logprobs(model, whole)[n_ctx - 1:].sum()))
        assert row["logliks"] == pytest.approx(hand, abs=tol)
        assert row["pick"] == int(np.argmax(hand))
        norm = [h / len(" " + c) for h, c in zip(hand, item["choices"])]
        assert row["pick_norm"] == int(np.argmax(norm))
        assert row["acc"] == float(row["pick"] == item["answer"])


def test_mc_pick_acc_and_acc_norm_disagree_on_length():
    # " a" (2 chars) at −4 vs " much longer" (12 chars) at −6: acc takes the first, acc_norm the second
    assert fg.mc_pick([-4.0, -6.0], ["a", "much longer"]) == (0, 1)
    assert fg.mc_pick([-1.0, -1.0], ["x", "y"]) == (0, 0)  # a tie: the first choice


def test_encode_pair_moves_the_context_space_to_the_continuation(hf):
    _, tok = hf
    ctx, cont = fg.encode_pair(tok, "Answer: ", "blue")
    assert ctx == tok("Answer:")["input_ids"] and ctx + cont == tok("Answer: blue")["input_ids"]


def test_prose_nll_matches_transformers_loss(opened, hf):
    import torch
    from jobs.general_checks import prose_scores
    model, tok = hf
    rows = prose_scores(opened.backend, opened.tokenizer, _general())
    assert {r["lang"] for r in rows} == {"fr", "en", "de"}
    tol = 1e-3 if opened.backend.name == "torch" else 2e-2
    for lang in PROSE:
        chunks = fg.prose_chunks(tok, PROSE[lang])
        mine = [r for r in rows if r["lang"] == lang]
        assert len(mine) == len(chunks)
        for r, ids in zip(mine, chunks):
            with torch.no_grad():
                loss = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()  # mean over len−1 tokens
            assert r["tokens"] == len(ids) - 1
            assert r["nll"] == pytest.approx(loss * (len(ids) - 1), abs=tol)


def test_prose_chunks_and_perplexity_arithmetic(hf):
    _, tok = hf
    ids = tok(PROSE["en"])["input_ids"]
    chunks = fg.prose_chunks(tok, PROSE["en"], size=64)
    assert sum(chunks, []) == ids and all(len(c) >= 16 for c in chunks)
    assert fg.perplexity([2.0, 4.0], [2, 4]) == pytest.approx(math.e)
    assert fg.perplexity([0.0], [5]) == 1.0


# ---------------------------------------------------------------- KL drift

def test_kl_known_values():
    same = np.log([[0.2, 0.3, 0.5]])
    assert fg.kl_per_token(same, same) == pytest.approx([0.0], abs=1e-12)
    p, q = np.log([[0.5, 0.5]]), np.log([[0.9, 0.1]])
    assert fg.kl_per_token(p, q)[0] == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    """A 1-step torch adapter, the same with lora_B zeroed (identical to the base) and with lora_B
    replaced by noise (a perturbed model)."""
    from common.adapters.format import load_adapter, save_common
    from jobs.trainer import train
    root = tmp_path_factory.mktemp("kl")
    data = write_jsonl(root / "train.jsonl", [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(4)])
    train(tiny_config(tiny_model, data, root / "run", training={"steps": 1}), "torch", echo=lambda *a, **k: None)
    spec, weights, meta = load_adapter(root / "run" / "adapter")
    rng = np.random.default_rng(0)
    out = {}
    for name, fn in {"zero": np.zeros_like, "noise": lambda w: rng.normal(0, 0.5, w.shape).astype(w.dtype)}.items():
        changed = {k: (fn(w) if "lora_B" in k else w) for k, w in weights.items()}
        meta = {k: v for k, v in meta.items() if k != "files"}
        out[name] = save_common(root / name, spec, changed, meta)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_drift_is_zero_for_an_identical_model_and_positive_for_a_perturbed_one(backend, tiny_model, adapters, hf,
                                                                              monkeypatch):
    from jobs.general_checks import drift_scores
    from jobs.session import add_adapter, open_model
    _, tok = hf
    answers = [{"id": f"p{i}", "prompt_ids": tok(f"Tell me about item {i}.")["input_ids"],
                "answer_ids": tok(f" Item {i} is a small blue thing.")["input_ids"]} for i in range(3)]
    answers.append({"id": "empty", "prompt_ids": tok("Hi")["input_ids"], "answer_ids": []})  # skipped
    opened = open_model(backend, str(tiny_model))
    for name, path in adapters.items():
        add_adapter(opened, name, path)
    kl = drift_scores(opened.backend, answers, list(adapters))
    assert [r["id"] for r in kl["zero"]] == ["p0", "p1", "p2"]
    assert all(r["tokens"] == len(a["answer_ids"]) for r, a in zip(kl["zero"], answers))
    assert max(r["kl"] for r in kl["zero"]) < 1e-6
    assert min(r["kl"] for r in kl["noise"]) > 1e-3
    # one answer per forward and one adapter at a time give the same figures as the batched pass
    monkeypatch.setitem(general_checks.PER_FORWARD, "drift", 1)
    alone = drift_scores(opened.backend, answers, ["noise"])["noise"]
    tol = 1e-5 if backend == "torch" else 2e-3
    assert [r["kl"] for r in alone] == pytest.approx([r["kl"] for r in kl["noise"]], abs=tol)


@pytest.mark.parametrize("what", ["prose", "mcq"])
def test_batched_scores_equal_one_sequence_per_forward(opened, what, monkeypatch):
    """Several right-padded sequences per forward score as each sequence alone (the padding is
    never seen by a causal model's real positions)."""
    score = general_checks.prose_scores if what == "prose" else general_checks.mcq_scores
    general = _general()
    batched = score(opened.backend, opened.tokenizer, general)
    monkeypatch.setitem(general_checks.PER_FORWARD, what, 1)
    alone = score(opened.backend, opened.tokenizer, general)
    tol = 1e-5 if opened.backend.name == "torch" else 2e-3
    if what == "prose":
        assert len({r["tokens"] for r in batched}) > 1  # chunks of different lengths: the batch is padded
        assert [r["tokens"] for r in batched] == [r["tokens"] for r in alone]
        assert [r["nll"] for r in batched] == pytest.approx([r["nll"] for r in alone], abs=tol)
    else:
        for b, a in zip(batched, alone):
            assert b["logliks"] == pytest.approx(a["logliks"], abs=tol)


def _small_general(extra_mcq: int = 0) -> fg.General:
    prompts = [{"id": f"g{i}", "lang": "en", "prompt": f"Name a colour, number {i}."} for i in range(3)]
    mcq = MCQ + [{"id": f"x{i}", "question": f"Pick {i}?", "choices": [str(i), "no"], "answer": 0}
                 for i in range(extra_mcq)]
    return fg.General(prose=PROSE, prompts=prompts, mcq=mcq)


def test_base_material_is_cached_per_base_and_material(tiny_model, other_tiny_model, tmp_path, monkeypatch):
    """A second run on the same base and material takes the base's answers and scores from the
    cache (same files); other material or another base computes them again."""
    monkeypatch.setenv("TWINLORA_FORGETTING_CACHE", str(tmp_path / "cache"))
    calls = []
    real_answers, real_scores = general_checks.base_answers, general_checks._base_scores
    monkeypatch.setattr(general_checks, "base_answers", lambda *a: calls.append("answers") or real_answers(*a))
    monkeypatch.setattr(general_checks, "_base_scores", lambda *a: calls.append("scores") or real_scores(*a))

    def run(model, name, general):
        monkeypatch.setattr(fg, "load_general", lambda: general)
        calls.clear()
        d = tmp_path / name
        general_checks.run_general("torch", str(model), {"base": None}, d, d / "answers.json", max_new_tokens=4,
                                   echo=lambda *a, **k: None)
        return list(calls), _read(d / "answers.json"), _read(d / "base.json")

    first = run(tiny_model, "a", _small_general())
    assert first[0] == ["answers", "scores"] and len(first[1]) == 3
    again = run(tiny_model, "b", _small_general())
    assert again == ([], first[1], first[2])  # from the cache: nothing computed, the same content
    assert run(tiny_model, "c", _small_general(extra_mcq=1))[0] == ["answers", "scores"]  # other material
    assert run(other_tiny_model, "d", _small_general())[0] == ["answers", "scores"]  # another base
    for entry in (tmp_path / "cache").glob("*.json"):
        entry.write_text("{cut", encoding="utf-8")  # a damaged cache: computed again, never an error
    assert run(tiny_model, "e", _small_general()) == (["answers", "scores"], first[1], first[2])


# ---------------------------------------------------------------- k-shot prompts

def _chat(q: str, a: str, system: str | None = None):
    from common.data.formats import Example
    msgs = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return Example(messages=tuple(msgs))


def test_shots_come_from_train_never_hold_a_test_question_and_are_seeded():
    from common.evaluation.fewshot import pick_shots, with_shots
    test = [_chat(f"q{i}", f"a{i}", "sys") for i in range(5)]
    train = [_chat(f"q{i}", f"a{i}") for i in range(10)]  # q0..q4 are also test questions
    for seed in range(20):
        shots = pick_shots(train, 3, seed, test)
        assert len(shots) == 3 and not {s.messages[0]["content"] for s in shots} & {f"q{i}" for i in range(5)}
    assert pick_shots(train, 3, 7, test) == pick_shots(train, 3, 7, test)
    with pytest.raises(ConfigError, match="6 shots asked for, but the training split has 5 usable examples"):
        pick_shots(train, 6, 0, test)
    shots = pick_shots(train, 2, 0, test)
    prompt = with_shots(test[0], shots).messages
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert prompt[0]["content"] == "sys" and prompt[-2:] == test[0].messages[1:]


# ---------------------------------------------------------------- failure categories

def test_every_failure_category_from_a_crafted_answer():
    from common.evaluation.failures import CATEGORIES, categorise, failure_table, language, opening_word
    refs = ["Article L100-1 du code prévoit que le public est informé.",
            "Article L200-2 du code dispose que la décision est motivée.",
            "Article L300-3 du code prévoit que les délais sont fixés par décret."]
    opening = opening_word(refs)
    assert opening == "article" and language(refs[0]) == "fr" and language("the cat is on the mat") == "en"
    ref, q = refs[0], "Que prévoit l'article L100-1 du code des relations entre le public et l'administration ?"
    crafted = {
        "empty": {"prediction": "  "},
        "cut by the token limit": {"prediction": "Article L100-1 du code prévoit", "truncated": True},
        "copies the prompt": {"prediction": "Que prévoit l'article L100-1 du code des relations entre le public"},
        "wrong language": {"prediction": "The article says that the public is informed of the decision."},
        "answer template not followed": {"prediction": "Le public est informé de la décision par le code."},
        "cites an article absent from the reference": {"prediction": "Article L999-9 du code prévoit que le public est informé."},
        "other": {"prediction": "Article L100-1 du code prévoit que la décision est publiée."},
    }
    assert list(crafted) == list(CATEGORIES)
    for cat, row in crafted.items():
        assert categorise({"reference": ref, "question": q, **row}, opening) == cat, cat
    rows = [{"id": i, "reference": ref, "question": q, **row} for i, row in enumerate(crafted.values())]
    table = failure_table(rows + [{"id": 99, "reference": ref, "question": q, "prediction": ref}],
                          [10.0] * 7 + [100.0], threshold=50)
    assert table["n_failed"] == 7 and table["n_items"] == 8
    assert {c: v["count"] for c, v in table["categories"].items()} == {c: 1 for c in CATEGORIES}
    assert table["categories"]["empty"]["examples"] == [{"id": 0, "score": 10.0, "prediction": "  ", "reference": ref}]


# ---------------------------------------------------------------- classification

def test_accuracy_and_macro_f1_on_a_crafted_confusion_matrix():
    from common.evaluation.metrics import classification_scores, macro_f1, parse_label
    labels = ["Livre Ier : Les échanges", "Livre II : Les actes", "Livre III : L'accès"]
    a, b, c = labels
    # gold a a a b b c ; predicted a a b b (unparseable) a
    gold = [a, a, a, b, b, c]
    answers = [a, "livre ier", "Livre II", b, "je ne sais pas", "Livre Ier : Les échanges."]
    parsed = [parse_label(x, labels) for x in answers]
    assert parsed == [a, a, b, b, None, a]
    # a: tp 2 fp 1 fn 1 → 4/6; b: tp 1 fp 1 fn 1 → 2/4; c: tp 0 fp 0 fn 1 → 0
    assert macro_f1(gold, parsed, labels) == pytest.approx((4 / 6 + 2 / 4 + 0) / 3)
    s = classification_scores(answers, gold, [labels] * 6)
    assert s["class_accuracy"] == pytest.approx(3 / 6) and s["class_unparsed_rate"] == pytest.approx(1 / 6)
    assert s["class_macro_f1"] == pytest.approx((4 / 6 + 2 / 4) / 3) and s["class_labels"] == labels
    assert [r["class_correct"] for r in s["per_item"]] == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert parse_label("Livre II ou Livre III", labels) is None  # two labels named: unparseable
    assert parse_label("livre iii", labels) == c                 # "livre ii" is not found in "livre iii"


def test_legi_classify_recipe(tmp_path):
    from conftest import ROOT
    from common.data.recipes import run_recipe
    from common.runs.io import iter_jsonl
    run_recipe("legi-classify", [str(ROOT / "data/legi/LEGITEXT000031366350_crpa_sample.json")], tmp_path / "d",
               seed=0, options={"ratios": "0.6,0.1,0.3"})
    splits = {s: [r for _, r in iter_jsonl(tmp_path / "d" / f"{s}.jsonl")] for s in ("train", "valid", "test")}
    assert {s: len(r) for s, r in splits.items()} == {"train": 84, "valid": 13, "test": 62}
    rows = [r for rs in splits.values() for r in rs]
    labels = rows[0]["meta"]["labels"]
    assert len(labels) == 3 and all(r["meta"]["labels"] == labels for r in rows)
    for r in rows:
        assert r["messages"][-1] == {"role": "assistant", "content": r["meta"]["label"]} and r["meta"]["label"] in labels
        assert all(f"- {lab}" in r["messages"][1]["content"] for lab in labels)
    articles = {s: {r["meta"]["article_id"] for r in rs} for s, rs in splits.items()}
    assert not articles["train"] & articles["test"] and not articles["train"] & articles["valid"]


# ---------------------------------------------------------------- the whole study, every option

LABELS = ["Livre Ier : Les couleurs", "Livre II : Les animaux"]
STUDY_OPTS = dict(curve_every=2, curve_items=2, test_items=None, max_new_tokens=4, n_boot=200, seed=0, shots=[0, 2],
                  ranks=[4, 8], forgetting=True, variability_items=2, variability_samples=3, temperature=0.7,
                  failure_threshold=50.0)


def _class_rows(n: int, start: int) -> list[dict]:
    words = ["bleu", "chat", "rouge", "chien"]
    rows = []
    for i in range(start, start + n):
        label = LABELS[i % 2]
        rows.append({"messages": [{"role": "system", "content": "Classez."},
                                  {"role": "user", "content": f"Extrait {i} : le {words[i % 4]}. Parties : {'; '.join(LABELS)}"},
                                  {"role": "assistant", "content": label}],
                     "meta": {"id": f"c{i}", "label": label, "labels": LABELS}})
    return rows


@pytest.fixture(scope="module")
def study(tiny_model, tmp_path_factory):
    from common.config.schema import dump_yaml, load_config
    from jobs.study import run_study
    root = tmp_path_factory.mktemp("decision")
    for name, (n, start) in {"train": (12, 0), "valid": (4, 100), "test": (6, 200)}.items():
        write_jsonl(root / f"{name}.jsonl", _class_rows(n, start))
    cfg = load_config(overrides={
        "model": {"path": str(tiny_model)},
        "data": {"train": str(root / "train.jsonl"), "valid": str(root / "valid.jsonl"),
                 "test": str(root / "test.jsonl"), "template": "chat", "max_length": 96},
        "training": {"steps": 4, "batch_size": 2, "lr": 1e-2, "log_every": 1},
        "lora": {"rank": 8, "alpha": 16, "target_modules": "all-linear"}, "output": str(root / "unused")})
    path = root / "study.yaml"
    path.write_text(dump_yaml(cfg), encoding="utf-8")
    out = root / "out"
    run_study(path, [], BACKENDS, out, echo=lambda *a, **k: None, **STUDY_OPTS)
    return root, path, out


def _read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_study_compares_prompted_tuned_and_ranked_systems(study):
    from common.runs.io import iter_jsonl
    root, _, out = study
    saved = _read(out / "study.json")
    head = saved["results"][0]
    assert head["metric"] == "accuracy" and head["n_items"] == 6
    assert list(head["systems"]) == ["baseline", "base-2shot", "torch-tuned", "mlx-tuned", "torch-r4"]
    assert head["best_prompted"] in ("baseline", "base-2shot")
    # the k-shot prompts: two training exchanges before each test question, the same two for every item
    train_q = {r["messages"][1]["content"] for _, r in iter_jsonl(root / "train.jsonl")}
    test_q = [r["messages"][1]["content"] for _, r in iter_jsonl(root / "test.jsonl")]
    prompts = [r for _, r in iter_jsonl(out / "base-2shot" / "test-prompts.jsonl")]
    shots = {tuple(m["content"] for m in p["messages"][1:5]) for p in prompts}
    assert len(shots) == 1 and {s for s in next(iter(shots))[::2]} <= train_q
    assert [p["messages"][-2]["content"] for p in prompts] == test_q
    # every item pays for its shots: prompt tokens grow, the tuned models pay as the baseline
    costs = saved["costs"]
    assert costs["base-2shot"]["prompt_tokens"] > costs["baseline"]["prompt_tokens"] == costs["torch-tuned"]["prompt_tokens"]
    assert costs["torch-r4"]["trainable_params"] * 2 == costs["torch-tuned"]["trainable_params"]  # rank 4 vs 8
    assert costs["torch-r4"]["rank"] == 4 and costs["torch-tuned"]["tokens_seen"] > 0
    assert costs["torch-tuned"]["tokens_seen"] == costs["mlx-tuned"]["tokens_seen"]
    cls = saved["classification"]
    assert set(cls) == set(head["systems"]) and all(c["class_labels"] == LABELS for c in cls.values())
    # the floor: always the most frequent test label (3 of 6, the first seen on a tie); F1 (2·3/9 + 0) / 2
    assert saved["majority_class"] == {"label": LABELS[0], "class_accuracy": 0.5, "class_macro_f1": pytest.approx(1 / 3)}
    agree = saved["agreement"]
    assert agree["n_items"] == 6 and agree["score"] == "class_correct"
    md = (out / "study.md").read_text(encoding="utf-8")
    verdict = md.split("## ")[1]
    assert verdict.startswith("Verdict\n\n**") and saved["verdict"]["text"] in verdict
    for section in ("## Systems on the test split", "## What tuning cost", "## Classification", "## Forgetting",
                    "## Output variability", "## Where ", "## Learning curves"):
        assert section in md, section
    for png in ("study.png", "study-ranks.png", "study-forgetting.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_study_forgetting_both_backends(study):
    _, _, out = study
    f = _read(out / "study.json")["forgetting"]
    assert list(f) == ["torch", "mlx"] and list(f["torch"]) == ["base", "torch-tuned", "torch-r4"]
    assert list(f["mlx"]) == ["base", "mlx-tuned"]
    tb, mb = (_read(out / "forgetting" / b / "base.json") for b in ("torch", "mlx"))
    assert len(tb["mcq"]) == len(fg.load_general().mcq) >= 100
    # the base model scores the same on both backends
    assert [c["nll"] for c in mb["prose"]] == pytest.approx([c["nll"] for c in tb["prose"]], rel=1e-4)
    assert [r["pick"] for r in mb["mcq"]] == [r["pick"] for r in tb["mcq"]]
    answers = _read(out / "forgetting" / "base-answers.json")
    assert len(answers) == len(fg.load_general().prompts) >= 50
    for b in ("torch", "mlx"):
        row = f[b][f"{b}-tuned"]
        assert row["drift_kl"]["mean"] > 0 and row["perplexity_change"]["lo"] <= row["perplexity_change"]["pct"] <= row["perplexity_change"]["hi"]
        assert row["mc_acc"]["n"] == len(tb["mcq"])
    v = _read(out / "study.json")["variability"]
    assert list(v) == ["baseline", "torch-tuned", "mlx-tuned"]
    assert all(x["items"] == 2 and 1 / 3 <= x["distinct_rate"]["mean"] <= 1 for x in v.values())
    fails = _read(out / "study.json")["failures"]
    assert fails["system"] in ("torch-tuned", "mlx-tuned", "torch-r4") and fails["n_items"] == 6
    assert fails["n_failed"] == sum(c["count"] for c in fails["categories"].values())


def test_interrupted_study_with_options_finishes_what_is_missing(study, monkeypatch):
    """A killed study lost the rank-4 test scores, the MLX forgetting file and the MLX variability:
    the rerun redoes exactly those and ends with the same report."""
    import jobs.evaluation
    import jobs.general_checks
    import jobs.trainer
    from jobs.study import run_study
    root, path, out = study
    cut = root / "cut"
    shutil.copytree(out, cut)
    for p in ("torch/rank-4/test", "forgetting/mlx/mlx-tuned.json", "variability/mlx-tuned.json", "study.json"):
        shutil.rmtree(cut / p) if (cut / p).is_dir() else (cut / p).unlink()
    scored, general = [], []
    real_eval, real_general = jobs.evaluation.run_eval, jobs.general_checks.run_general

    def no_train(*a, **k):
        raise AssertionError("nothing is trained again")
    monkeypatch.setattr(jobs.trainer, "train", no_train)
    monkeypatch.setattr(jobs.evaluation, "run_eval", lambda **k: scored.append(k["label"]) or real_eval(**k))
    monkeypatch.setattr(jobs.general_checks, "run_general",
                        lambda backend, model, systems, d, *a, **k: general.append(
                            (backend, sorted(n for n in systems if not (d / f"{n}.json").is_file())))
                        or real_general(backend, model, systems, d, *a, **k))
    run_study(path, [], BACKENDS, cut, echo=lambda *a, **k: None, **STUDY_OPTS)
    assert scored == ["torch-r4 test"]
    assert general == [("torch", []), ("mlx", ["mlx-tuned"])]
    a, b = _read(cut / "study.json"), _read(out / "study.json")
    assert a["results"] == b["results"] and a["forgetting"] == b["forgetting"] and a["verdict"] == b["verdict"]
    assert a["variability"].keys() == b["variability"].keys()


def test_a_second_study_of_the_same_base_takes_the_base_material_from_the_cache(study, monkeypatch):
    """Another study of the same base (its tuned systems kept, no forgetting file yet) reuses the
    base's greedy answers and scores from the cache, and reports the same forgetting figures."""
    from jobs.study import run_study
    root, path, out = study
    second = root / "second"
    shutil.copytree(out, second)
    shutil.rmtree(second / "forgetting")
    (second / "study.json").unlink()

    def computed(*a, **k):
        raise AssertionError("the base material is computed again")
    monkeypatch.setattr(general_checks, "base_answers", computed)
    monkeypatch.setattr(general_checks, "_base_scores", computed)
    run_study(path, [], BACKENDS, second, echo=lambda *a, **k: None, **STUDY_OPTS)
    assert _read(second / "study.json")["forgetting"] == _read(out / "study.json")["forgetting"]
    assert _read(second / "forgetting" / "base-answers.json") == _read(out / "forgetting" / "base-answers.json")


def test_study_records_wall_and_cpu_seconds_per_stage(study):
    _, _, out = study
    times = _read(out / "study.json")["stage_times"]
    assert list(times) == ["baselines", "torch: training, curve, test", "mlx: training, curve, test",
                           "torch: other ranks", "forgetting (torch)", "forgetting (mlx)", "variability"]
    assert all(t["runs"] == 1 and t["wall_s"] >= 0 and t["cpu_s"] >= 0 for t in times.values())
    assert times["torch: training, curve, test"]["cpu_s"] > 0
    md = (out / "study.md").read_text(encoding="utf-8")
    assert "## Time per stage" in md and "| forgetting (mlx) |" in md


def test_study_with_other_shots_is_refused(study):
    from jobs.study import run_study
    _, path, out = study
    with pytest.raises(ConfigError, match=r"other settings \(differs in shots\)"):
        run_study(path, [], BACKENDS, out, echo=lambda *a, **k: None, **{**STUDY_OPTS, "shots": [3]})


@pytest.mark.parametrize("args, message", [
    (["--shots", "0,x"], "--shots"),
    (["--shots", "13"], "13 shots asked for, but the training split has 12 usable examples"),
    (["--ranks", "0"], "--ranks value(s) 0 out of range"),
])
def test_cli_study_refuses_bad_option_lists(study, tmp_path, args, message):
    _, path, _ = study
    r = run_cli("study", "--config", path, "--output", tmp_path / "s", *args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "s").exists()


def test_a_study_recorded_before_new_config_keys_still_resumes(study):
    """A newer twinlora adds config keys with defaults: the study recorded before them is the same
    study (resumable); the same key with another value is other settings."""
    from common.runs.io import read_json, write_json
    from jobs.study_plan import SETTINGS, plan_study
    root, path, out = study
    old = root / "old-settings"
    old.mkdir()
    recorded = read_json(out / SETTINGS, SETTINGS)
    del recorded["config"]["training"]["objective"], recorded["config"]["training"]["beta"]
    write_json(old / SETTINGS, recorded)
    plan_study(path, [], BACKENDS, old, **STUDY_OPTS)  # accepted
    with pytest.raises(ConfigError, match=r"other settings \(differs in config\)"):
        plan_study(path, ["training.beta=0.5"], BACKENDS, old, **STUDY_OPTS)
