"""Recipes on the real shared samples (/work/shared/data) and on small hand-made files.

The exact numbers below were computed from the shared samples and are asserted as they are: a
change in filtering, templates or splitting shows up here.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common.data import splits
from common.data.recipes import RECIPES, run_recipe
from common.data.recipes import legi, slds, squad
from common.errors import ConfigError, DataError, UserError

from conftest import SHARED  # noqa: E402  (../shared/data, or the copies in data/)
from helpers import write_jsonl  # noqa: E402
REPO = Path(__file__).resolve().parents[1]
CRPA = SHARED / "legi" / "LEGITEXT000031366350_crpa_sample.json"
MARITIME = SHARED / "legi" / "LEGITEXT000006072051_code_travail_maritime_2019-09-23.json"
SQUAD = SHARED / "squad" / "dev-v2.0-sample.json"

needs_shared = pytest.mark.skipif(not (CRPA.is_file() and MARITIME.is_file() and SQUAD.is_file()),
                                  reason=f"shared sample data missing under {SHARED}")


def rows(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def all_rows(out: Path) -> dict[str, list[dict]]:
    return {s: rows(out, s) for s in splits.SPLITS}


def files_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


# ---------------------------------------------------------------- legi

@needs_shared
def test_crpa_counts_and_split(tmp_path):
    m = run_recipe("legi", [str(CRPA)], tmp_path, seed=0)
    assert m["articles"] == {"article_nodes": 42, "kept": 42, "repeated": 0}
    assert m["articles_kept_per_code"] == {"LEGITEXT000031366350": 42}
    assert m["pairs_per_template"] == {t: 42 for t in legi.TEMPLATES}
    assert m["pairs_per_code"] == {"LEGITEXT000031366350": 210}
    assert m["counts"] == {"train": 170, "valid": 20, "test": 20}
    assert m["groups"] == {"train": 34, "valid": 4, "test": 4}
    assert m["duplicates_dropped"] == 0
    from common.runs.io import relative_to  # None here: the sample and tmp_path share only "/"
    assert m["sources"] == [{"path": str(CRPA), "path_relative": relative_to(CRPA, tmp_path),
                             "sha256": m["sources"][0]["sha256"]}]
    assert "pairs_per_template: explain 42" in m["summary"]
    on_disk = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk == m
    for name, info in m["files"].items():
        assert info["rows"] == len((tmp_path / name).read_text(encoding="utf-8").splitlines())


@needs_shared
def test_maritime_2019_layout_and_abrogated(tmp_path):
    m = run_recipe("legi", [str(MARITIME)], tmp_path / "a", seed=0)
    assert m["articles"] == {"article_nodes": 5, "kept": 3, "repeated": 0, "skipped_not_in_force": 2}
    assert m["codes"] == {"LEGITEXT000006072051": "Code du travail maritime"}
    assert m["pairs_per_template"] == {t: 3 for t in legi.TEMPLATES}
    assert m["counts"] == {"train": 5, "valid": 5, "test": 5}
    kept = {r["meta"]["article_num"] for rs in all_rows(tmp_path / "a").values() for r in rs}
    assert kept == {"40", "75", "133-1"}

    m = run_recipe("legi", [str(MARITIME)], tmp_path / "b", seed=0, options={"include_abrogated": True})
    assert m["articles"] == {"article_nodes": 5, "kept": 5, "repeated": 0}
    etats = {r["meta"]["article_num"]: r["meta"]["etat"] for rs in all_rows(tmp_path / "b").values() for r in rs}
    assert etats == {"21": "ABROGE_DIFF", "40": "VIGUEUR", "75": "VIGUEUR", "113": "ABROGE_DIFF",
                     "133-1": "VIGUEUR"}


@needs_shared
def test_breadcrumbs_and_clean_text():
    arts = {a.num: a for a in legi.read_code(CRPA).articles}
    assert arts["L100-1"].breadcrumb == ("Dispositions préliminaires",)
    assert arts["L112-1"].breadcrumb == (
        "Livre Ier : LES ÉCHANGES AVEC L'ADMINISTRATION",
        "Titre Ier : LES DEMANDES DU PUBLIC ET LEUR TRAITEMENT",
        "Chapitre II : Modalités de saisine et d'échanges",
        "Section 1 : Règles générales",
        "Sous-section 1 : Certification de la date d'envoi",
    )
    assert arts["L100-1"].text == (
        "Le présent code régit les relations entre le public et l'administration en l'absence de "
        "dispositions spéciales applicables.\nSauf dispositions contraires du présent code, celui-ci est "
        "applicable aux relations entre l'administration et ses agents.")
    assert arts["L100-1"].id == "LEGIARTI000031367304"
    assert all("<" not in a.text and "&" not in a.text for a in arts.values())
    old = {a.num: a for a in legi.read_code(MARITIME).articles}
    assert old["40"].breadcrumb == (
        "Titre 4 : Des obligations de l'armateur envers le marin",
        "Chapitre 1 : Des salaires fixes, profits éventuels et autres rémunérations",
        "Section 1 : Des divers modes de rémunération des marins et des règles qui servent de base "
        "à la liquidation des salaires")
    assert legi.clean_text("<p>a&nbsp;&amp; <b>b</b></p><br/>  c\t d ") == "a & b\nc d"


@needs_shared
def test_every_response_cites_its_article(tmp_path):
    run_recipe("legi", [str(CRPA), str(MARITIME)], tmp_path, seed=0,
               options={"include_abrogated": True})
    records = [r for rs in all_rows(tmp_path).values() for r in rs]
    assert len(records) == 5 * (42 + 5)
    for r in records:
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert r["messages"][0]["content"] == legi.SYSTEM_PROMPT
        assert f"Article {r['meta']['article_num']}" in r["messages"][2]["content"]
        assert set(r["meta"]) >= {"code_id", "code_title", "article_num", "article_id", "template", "breadcrumb"}
    by_template = {r["meta"]["template"]: r for r in records if r["meta"]["article_num"] == "L100-1"}
    assert by_template["text"]["messages"][1]["content"] in (
        "Que dit l'article L100-1 du Code des relations entre le public et l'administration ?",
        "Citez le texte de l'article L100-1 du Code des relations entre le public et l'administration.")
    assert by_template["text"]["messages"][2]["content"] == (
        "Article L100-1 du Code des relations entre le public et l'administration :\n« Le présent code régit "
        "les relations entre le public et l'administration en l'absence de dispositions spéciales applicables."
        "\nSauf dispositions contraires du présent code, celui-ci est applicable aux relations entre "
        "l'administration et ses agents. »")
    assert by_template["locate"]["messages"][2]["content"].endswith("- Dispositions préliminaires")
    assert "Le présent code régit" in by_template["identify"]["messages"][1]["content"]


@needs_shared
def test_legi_split_disjoint_and_deterministic(tmp_path):
    run_recipe("legi", [str(CRPA)], tmp_path / "a", seed=0)
    run_recipe("legi", [str(CRPA)], tmp_path / "b", seed=0)
    run_recipe("legi", [str(CRPA)], tmp_path / "c", seed=1)
    ids = {s: {r["meta"]["article_id"] for r in rs} for s, rs in all_rows(tmp_path / "a").items()}
    assert not ids["train"] & ids["valid"] and not ids["train"] & ids["test"] and not ids["valid"] & ids["test"]
    assert len(ids["train"] | ids["valid"] | ids["test"]) == 42
    assert files_bytes(tmp_path / "a") == files_bytes(tmp_path / "b")
    assert (tmp_path / "a" / "test.jsonl").read_bytes() != (tmp_path / "c" / "test.jsonl").read_bytes()


@needs_shared
def test_legi_same_code_twice_is_deduplicated(tmp_path):
    m = run_recipe("legi", [str(CRPA), str(CRPA)], tmp_path, seed=0)
    assert m["articles"]["kept"] == 42 and m["articles"]["repeated"] == 42
    assert m["total"] == 210


@needs_shared
def test_code_id_resolution(tmp_path, monkeypatch):
    legi_dir = tmp_path / "legi"
    legi_dir.mkdir()
    shutil.copy(CRPA, legi_dir / CRPA.name)  # <id>_*.json
    m = run_recipe("legi", ["LEGITEXT000031366350"], tmp_path / "out", options={"legi_dir": str(legi_dir)})
    assert m["sources"][0]["path"] == str(legi_dir / CRPA.name)
    monkeypatch.setenv("TWINLORA_LEGI_DIR", str(legi_dir))
    assert legi.resolve_inputs(["LEGITEXT000031366350"], legi.legi_dir()) == [legi_dir / CRPA.name]
    with pytest.raises(DataError) as exc:
        run_recipe("legi", ["LEGITEXT000006072050"], tmp_path / "out2")
    msg = str(exc.value)
    assert "LEGITEXT000006072050" in msg and str(legi_dir) in msg and CRPA.name in msg
    shutil.copy(CRPA, legi_dir / "LEGITEXT000031366350.json")
    with pytest.raises(DataError, match="several files"):
        legi.resolve_code_id("LEGITEXT000031366350", legi_dir)
    with pytest.raises(DataError, match="does not exist"):
        legi.resolve_code_id("LEGITEXT000031366350", tmp_path / "nowhere")


def _code(children):
    return {"type": "code", "data": {"id": "LEGITEXT000000000001", "title": "Code de test"}, "children": children}


def _article(num, text="Texte suffisamment long pour dépasser la limite de cinquante caractères.", etat="VIGUEUR"):
    return {"type": "article", "data": {"id": f"LEGIARTI{num}", "num": num, "texte": text, "etat": etat}}


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


@needs_shared
def test_legi_errors(tmp_path):
    with pytest.raises(DataError) as exc:
        run_recipe("legi", [str(SQUAD)], tmp_path / "o")
    assert str(exc.value).startswith(f"{SQUAD}: not legi-data JSON")
    assert '"type", "data" and "children"' in str(exc.value)

    empty = _write(tmp_path / "empty.json", _code([
        {"type": "section", "data": {"title": "Titre Ier"}, "children": [
            _article("L1", etat="ABROGE"), _article("L2", text="Trop court.")]}]))
    with pytest.raises(DataError) as exc:
        run_recipe("legi", [str(empty)], tmp_path / "o")
    assert str(exc.value).startswith(f"{empty}: no usable article")
    assert "not_in_force 1" in str(exc.value) and "short_text 1" in str(exc.value)

    no_data = _write(tmp_path / "nodata.json", _code([
        _article("L1"), {"type": "section", "data": {"title": "T"}, "children": [_article("L2"), {"type": "article"}]}]))
    with pytest.raises(DataError) as exc:
        legi.read_code(no_data)
    assert str(exc.value).startswith(f'{no_data}:children[1].children[1]: node has no "data" object')

    bad_children = _write(tmp_path / "badchildren.json", _code([
        {"type": "section", "data": {"title": "T"}, "children": [
            {"type": "section", "data": {"title": "U"}, "children": "oops"}]}]))
    with pytest.raises(DataError) as exc:
        legi.read_code(bad_children)
    assert str(exc.value).startswith(f'{bad_children}:children[0].children[0]: "children" must be a list')

    not_code = _write(tmp_path / "section.json", {"type": "section", "data": {"title": "T"}, "children": []})
    with pytest.raises(DataError, match="root is not a code"):
        legi.read_code(not_code)
    with pytest.raises(DataError, match="file not found"):
        run_recipe("legi", [str(tmp_path / "missing.json")], tmp_path / "o")


def test_legi_identify_needs_a_unique_passage(tmp_path):
    shared = "Cette phrase identique figure mot pour mot dans deux articles du code."
    path = _write(tmp_path / "code.json", _code([_article("L1", shared), _article("L2", shared + " Puis vient une seconde phrase, propre à cet article seulement.")]))
    m = run_recipe("legi", [str(path)], tmp_path / "o")
    assert m["pairs_skipped"] == {"identify_no_unique_passage": 1}
    assert m["pairs_per_template"]["identify"] == 1


# ---------------------------------------------------------------- splits and the jsonl recipe

def test_dedup_and_split_by_group():
    data = [{"text": "a", "meta": {"g": 1}}, {"text": "a", "meta": {"g": 2}}, {"text": "b", "meta": {"g": 1}}]
    assert splits.dedup(data) == [data[0], data[2]]
    many = [{"text": str(i), "meta": {"g": i // 3}} for i in range(300)]
    a = splits.split_by_group(many, "g", seed=3)
    groups = {s: {r["meta"]["g"] for r in rs} for s, rs in a.items()}
    b = splits.split_by_group(list(reversed(many)), "g", seed=3)  # input order does not matter
    assert groups == {s: {r["meta"]["g"] for r in rs} for s, rs in b.items()}
    assert [r["text"] for r in a["valid"]] == sorted((r["text"] for r in a["valid"]), key=int)  # order kept
    assert sum(len(g) for g in groups.values()) == 100 and [len(groups[s]) for s in splits.SPLITS] == [80, 10, 10]
    assert a != splits.split_by_group(many, "g", seed=4)
    only_test = splits.split_by_group(many, "g", ratios=(0, 0, 1))
    assert [len(only_test[s]) for s in splits.SPLITS] == [0, 0, 300]
    with pytest.raises(DataError, match="empty"):
        splits.split_by_group([], "g")
    with pytest.raises(ConfigError, match="ratios"):
        splits.check_ratios((0.5, 0.5, 0.5))
    assert splits.check_ratios("0.7,0.2,0.1") == (0.7, 0.2, 0.1)


def test_jsonl_recipe(tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [{"text": "un"}, {"instruction": "i", "output": "o"}, {"prompt": "p", "completion": "c"},
             {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
             {"text": "un"}]
    src.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    m = run_recipe("jsonl", [str(src)], tmp_path / "o", seed=0)
    assert m["records_read"] == 5 and m["duplicates_dropped"] == 1 and m["total"] == 4
    assert m["shapes"] == {"text": 2, "alpaca": 1, "prompt_completion": 1, "messages": 1}
    src.write_text('{"text": "ok"}\n{"question": "?"}\n', encoding="utf-8")
    with pytest.raises(DataError) as exc:
        run_recipe("jsonl", [str(src)], tmp_path / "o")
    assert str(exc.value).startswith(f"{src}:2: record has no known shape")


def test_registry_and_unknown_names(tmp_path):
    assert set(RECIPES) == {"jsonl", "legi", "legi-classify", "slds", "squad"}
    assert all(r.help and callable(r.run) for r in RECIPES.values())
    with pytest.raises(UserError) as exc:
        run_recipe("nope", ["x"], tmp_path)
    assert "jsonl, legi, legi-classify, slds, squad" in str(exc.value)
    with pytest.raises(ConfigError, match="unknown option"):
        run_recipe("squad", ["x"], tmp_path, options={"max_length": 3})
    with pytest.raises(UserError, match="at least one input"):
        run_recipe("squad", [], tmp_path)


# ---------------------------------------------------------------- squad

@needs_shared
def test_squad_counts_prompt_and_split(tmp_path):
    m = run_recipe("squad", [str(SQUAD)], tmp_path, seed=0)
    assert m["questions"] == {"total": 200, "answerable": 96, "unanswerable": 104}
    assert m["counts"] == {"train": 156, "valid": 26, "test": 18}
    assert m["groups"] == {"train": 25, "valid": 3, "test": 3}
    by_split = all_rows(tmp_path)
    records = [r for rs in by_split.values() for r in rs]
    assert len(records) == 200
    assert sum(r["completion"] == " " + squad.NO_ANSWER for r in records) == 104
    assert sum(r["meta"]["is_impossible"] for r in records) == 104
    assert all((r["completion"] == " unanswerable") == r["meta"]["is_impossible"] for r in records)
    rec = next(r for r in records if r["meta"]["id"] == "56de3d594396321400ee26ca")
    assert rec["prompt"] == (
        "Question: Where was Ralph earl of?\nContext: Even before the Norman Conquest of England, the Normans "
        "had come into contact with Wales. Edward the Confessor had set up the aforementioned Ralph as earl of "
        "Hereford and charged him with defending the Marches and warring with the Welsh. In these original "
        "ventures, the Normans failed to make any headway into Wales.\nAnswer:")
    assert rec["completion"] == " Hereford"
    assert rec["meta"]["answers"] == ["Hereford", "Hereford", "Hereford"] and rec["meta"]["title"] == "Normans"
    ctx = {s: {r["meta"]["context_id"] for r in rs} for s, rs in by_split.items()}
    assert not ctx["train"] & ctx["valid"] and not ctx["train"] & ctx["test"] and not ctx["valid"] & ctx["test"]

    m = run_recipe("squad", [str(SQUAD)], tmp_path / "all", options={"test_all": True})
    assert m["counts"] == {"train": 0, "valid": 0, "test": 200}


@needs_shared
def test_squad_errors(tmp_path):
    data = json.loads(SQUAD.read_text(encoding="utf-8"))
    del data["data"][1]["paragraphs"][0]["qas"][1]["question"]
    bad = _write(tmp_path / "bad.json", data)
    with pytest.raises(DataError) as exc:
        run_recipe("squad", [str(bad)], tmp_path / "o")
    assert str(exc.value).startswith(f'{bad}:data[1].paragraphs[0].qas[1]: missing "question"')
    with pytest.raises(DataError) as exc:
        run_recipe("squad", [str(CRPA)], tmp_path / "o")
    assert str(exc.value).startswith(f"{CRPA}: not SQuAD JSON")


# ---------------------------------------------------------------- slds

def _slds_file(tmp_path, records) -> Path:
    return write_jsonl(tmp_path / "slds.jsonl", records)


def test_slds_synthetic_demo_file_and_instructions():
    shipped = [json.loads(x) for x in (REPO / "data" / "slds" / "synthetic.jsonl").read_text(encoding="utf-8").splitlines()]
    assert shipped == slds.synthetic_records(10, 0)
    assert 8 <= len(shipped) <= 12
    assert {r["decision_language"] for r in shipped} == {"de", "fr", "it"}
    assert len(slds.INSTRUCTIONS) == 9
    assert slds.INSTRUCTIONS[("fr", "de")] == "Fasse den folgenden französischen Entscheid als deutsche Regeste zusammen."


def test_slds_render_split_and_truncation(tmp_path):
    records = slds.synthetic_records(10, 0)
    src = _slds_file(tmp_path, records)
    m = run_recipe("slds", [str(src)], tmp_path / "full", seed=0)
    assert m["truncated"]["over_max_length"] == 0 and m["total"] == 10
    by_split = all_rows(tmp_path / "full")
    ids = {s: {r["meta"]["decision_id"] for r in rs} for s, rs in by_split.items()}
    assert not ids["train"] & ids["valid"] and not ids["train"] & ids["test"] and not ids["valid"] & ids["test"]
    rec = next(r for rs in by_split.values() for r in rs if r["meta"]["sample_id"] == 0)
    src_rec = records[0]
    pair = (src_rec["decision_language"], src_rec["headnote_language"])
    assert rec["messages"][1]["content"] == f"{slds.INSTRUCTIONS[pair]}\n\n{src_rec['decision']}"
    assert rec["messages"][2]["content"] == src_rec["headnote"]

    count = slds.estimate_tokens
    budget = 390  # estimates of the 10 records run from 342 to 424 tokens: 5 are over
    with pytest.warns(UserWarning, match="truncated"):
        m = run_recipe("slds", [str(src)], tmp_path / "cut", options={"max_length": budget})
    assert m["truncated"]["over_max_length"] == m["truncated"]["decisions_truncated"] == 5
    assert m["truncated"]["skipped_too_long"] == 0
    heads = {r["sample_id"]: r for r in records}
    for r in (r for rs in all_rows(tmp_path / "cut").values() for r in rs):
        orig = heads[r["meta"]["sample_id"]]
        assert r["messages"][2]["content"] == orig["headnote"]  # never cut
        assert count("\n\n".join(x["content"] for x in r["messages"])) <= budget
        if r["meta"]["truncated"]:
            user = r["messages"][1]["content"]
            assert user.endswith(slds.CUT_MARK)
            assert orig["decision"].startswith(user.split("\n\n", 1)[1][:-len(slds.CUT_MARK)].rstrip())
            assert r["meta"]["tokens"] > budget
        else:
            assert r["meta"]["tokens"] <= budget and r["messages"][1]["content"].endswith(orig["decision"])
    assert sorted(m["truncated_sample_ids"]) == sorted(
        r["meta"]["sample_id"] for rs in all_rows(tmp_path / "cut").values() for r in rs if r["meta"]["truncated"])

    with pytest.warns(UserWarning, match="10 could not fit"), pytest.raises(DataError, match="empty"):
        run_recipe("slds", [str(src)], tmp_path / "tiny", options={"max_length": 5})


def test_slds_template_replacement(tmp_path):
    src = _slds_file(tmp_path, slds.synthetic_records(3, 1))
    user = tmp_path / "user.jinja"
    user.write_text("CUSTOM {{ decision_language }}->{{ headnote_language }} ({{ law_area }}, {{ year }})\n"
                    "{{ decision }}\n", encoding="utf-8")
    system = tmp_path / "system.jinja"
    system.write_text("Assistant juridique.\n", encoding="utf-8")
    run_recipe("slds", [str(src)], tmp_path / "o", options={"user_template": str(user), "system_template": str(system)})
    for r in (r for rs in all_rows(tmp_path / "o").values() for r in rs):
        meta = r["meta"]
        assert r["messages"][0]["content"] == "Assistant juridique."
        assert r["messages"][1]["content"].startswith(
            f"CUSTOM {meta['decision_language']}->{meta['headnote_language']} ({meta['law_area']}, {meta['year']})\n")
    user.write_text("{{ no_such_variable }}", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        run_recipe("slds", [str(src)], tmp_path / "o", options={"user_template": str(user)})
    assert str(exc.value).startswith(f"{user}: template uses an undefined variable")


def test_slds_missing_field(tmp_path):
    records = slds.synthetic_records(3, 0)
    del records[1]["headnote"]
    src = _slds_file(tmp_path, records)
    with pytest.raises(DataError) as exc:
        run_recipe("slds", [str(src)], tmp_path / "o")
    assert str(exc.value).startswith(f'{src}:2: missing field "headnote"')
    records = slds.synthetic_records(3, 0)
    records[2]["headnote_language"] = "en"
    with pytest.raises(DataError, match=f"{src}:3: field \"headnote_language\" is 'en'"):
        run_recipe("slds", [str(_slds_file(tmp_path, records))], tmp_path / "o")


# ---------------------------------------------------------------- shipped demo data

@needs_shared
def test_demo_copies_match_shared():
    for rel in ("legi/LEGITEXT000031366350_crpa_sample.json", "squad/dev-v2.0-sample.json"):
        assert (REPO / "data" / rel).read_bytes() == (SHARED / rel).read_bytes()
