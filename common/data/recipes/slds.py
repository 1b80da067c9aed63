"""Swiss court decisions → headnotes (SLDS-style), in messages shape, prompts from Jinja files.

The prompts live in `templates/slds_system.jinja` and `templates/slds_user.jinja` so a user can
change the wording without touching code (options `system_template` / `user_template`); they are
rendered with StrictUndefined so a misspelt variable fails instead of vanishing. The language pair
(decision → headnote) picks the instruction, always worded in the headnote's language.

Long decisions: with `max_length` (tokens), each record's rendered system + user + headnote is
counted with `count_tokens` (a callable str → int from the caller, normally the model tokenizer;
default `estimate_tokens`: whitespace words × 1.3, rounded up — a rough estimate, not a
tokenizer). Over the limit, only the DECISION is cut (at a word boundary, marked "[…]"): the
headnote is the training target and is never cut. Counts go to the manifest under "truncated"
and a warning is issued (`warnings` and `logging`).

No SLDS data is available offline: `synthetic_records` makes fake but plausible records for demos
and tests (`data/slds/synthetic.jsonl` holds `synthetic_records(10, 0)`).
"""
from __future__ import annotations

import logging
import math
import random
import re
import uuid
import warnings
from pathlib import Path
from typing import Any

import jinja2

from common.data.splits import DEFAULT_RATIOS, finish
from common.errors import ConfigError, DataError
from common.io import iter_jsonl

log = logging.getLogger(__name__)

NAME = "slds"
HELP = ("Swiss court decisions → headnotes (SLDS-style JSONL with sample_id, decision_id, decision, "
        "decision_language, headnote, headnote_language, law_area, year). Prompts are rendered from "
        "Jinja templates (replace them with system_template / user_template); the instruction "
        "follows the language pair (de/fr/it → de/fr/it). With max_length, decisions (never "
        "headnotes) are truncated to fit. Split by decision_id.")
OPTIONS = {
    "system_template": "path of a Jinja template for the system message",
    "user_template": "path of a Jinja template for the user message",
    "max_length": "token budget for system + user + headnote; the decision is truncated to fit",
    "count_tokens": "callable str -> int counting tokens (default: whitespace words x 1.3)",
}
FIELDS = ("sample_id", "decision_id", "decision", "decision_language", "headnote", "headnote_language",
          "law_area", "year")
LANGUAGES = ("de", "fr", "it")
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
CUT_MARK = "[…]"

# (decision language, headnote language) → instruction, worded in the headnote language
INSTRUCTIONS = {
    ("de", "de"): "Fasse den folgenden deutschen Entscheid als deutsche Regeste zusammen.",
    ("fr", "de"): "Fasse den folgenden französischen Entscheid als deutsche Regeste zusammen.",
    ("it", "de"): "Fasse den folgenden italienischen Entscheid als deutsche Regeste zusammen.",
    ("de", "fr"): "Résume l'arrêt suivant, rédigé en allemand, sous la forme d'un regeste en français.",
    ("fr", "fr"): "Résume l'arrêt suivant, rédigé en français, sous la forme d'un regeste en français.",
    ("it", "fr"): "Résume l'arrêt suivant, rédigé en italien, sous la forme d'un regeste en français.",
    ("de", "it"): "Riassumi la seguente sentenza, redatta in tedesco, sotto forma di regesto in italiano.",
    ("fr", "it"): "Riassumi la seguente sentenza, redatta in francese, sotto forma di regesto in italiano.",
    ("it", "it"): "Riassumi la seguente sentenza, redatta in italiano, sotto forma di regesto in italiano.",
}


def estimate_tokens(text: str) -> int:
    """Default token count: whitespace-separated words × 1.3, rounded up (no tokenizer needed)."""
    return math.ceil(len(text.split()) * 1.3)


# ---------------------------------------------------------------- templates

def load_template(path: str | Path) -> tuple[Path, jinja2.Template]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("template file not found", where=str(path), fix="give the path of a Jinja template")
    from common.templates import jinja_env
    env = jinja_env()  # sandboxed: a template file may come from anyone
    try:
        return path, env.from_string(path.read_text(encoding="utf-8"))
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"Jinja syntax error: {exc.message}", where=f"{path}:{exc.lineno}",
                          fix="repair the template") from exc


def render(template: tuple[Path, jinja2.Template], variables: dict) -> str:
    path, tmpl = template
    try:
        return tmpl.render(**variables).strip()
    except jinja2.UndefinedError as exc:
        raise ConfigError(f"template uses an undefined variable ({exc.message})", where=str(path),
                          fix=f"available variables: {', '.join(sorted(variables))}") from exc
    except jinja2.exceptions.SecurityError as exc:
        raise ConfigError(f"template tried an operation the sandbox refuses ({exc})", where=str(path),
                          fix="a prompt template may only use its variables and Jinja filters") from exc


# ---------------------------------------------------------------- records

def check_record(obj: Any, where: str) -> dict:
    """Required fields present, texts non-empty, languages known; returns the record."""
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, found a {type(obj).__name__}", where=where,
                        fix=f"give one object per line with {', '.join(FIELDS)}")
    for name in FIELDS:
        if name not in obj or obj[name] is None:
            raise DataError(f'missing field "{name}"', where=where, fix=f"every record needs {', '.join(FIELDS)}")
    for name in ("decision", "headnote"):
        if not isinstance(obj[name], str) or not obj[name].strip():
            raise DataError(f'field "{name}" must be non-empty text', where=where, fix="fill it or drop the record")
    for name in ("decision_language", "headnote_language"):
        if obj[name] not in LANGUAGES:
            raise DataError(f'field "{name}" is {obj[name]!r}, expected one of {", ".join(LANGUAGES)}',
                            where=where, fix="use de, fr or it")
    return obj


def _cut_decision(decision: str, n_words: int) -> str:
    if n_words <= 0:
        return CUT_MARK
    ends = [m.end() for m in re.finditer(r"\S+", decision)]
    return decision[:ends[n_words - 1]] + " " + CUT_MARK


class Renderer:
    """Renders one record to messages; fits it to `max_length` by cutting the decision."""

    def __init__(self, options: dict):
        self.system = load_template(options.get("system_template") or TEMPLATE_DIR / "slds_system.jinja")
        self.user = load_template(options.get("user_template") or TEMPLATE_DIR / "slds_user.jinja")
        self.max_length = options.get("max_length")
        if self.max_length is not None:
            try:
                self.max_length = int(self.max_length)
            except (TypeError, ValueError):
                self.max_length = 0
            if self.max_length <= 0:
                raise ConfigError(f"max_length must be a positive number of tokens, got {options['max_length']!r}",
                                  where="max_length", fix="give e.g. max_length=2048")
        self.count = options.get("count_tokens") or estimate_tokens
        if not callable(self.count):
            raise ConfigError("count_tokens must be a callable taking a string and returning an int",
                              where="count_tokens", fix="pass e.g. lambda s: len(tokenizer.encode(s))")

    def _messages(self, rec: dict, decision: str) -> list[dict]:
        variables = {k: rec[k] for k in FIELDS if k != "headnote"}
        variables["decision"] = decision
        variables["instruction"] = INSTRUCTIONS[(rec["decision_language"], rec["headnote_language"])]
        return [{"role": "system", "content": render(self.system, variables)},
                {"role": "user", "content": render(self.user, variables)},
                {"role": "assistant", "content": rec["headnote"].strip()}]

    def _tokens(self, messages: list[dict]) -> int:
        return int(self.count("\n\n".join(m["content"] for m in messages)))

    def __call__(self, rec: dict) -> tuple[list[dict] | None, int | None, bool]:
        """(messages or None if even an empty decision does not fit, tokens before cutting, cut?)"""
        decision = rec["decision"].strip()
        messages = self._messages(rec, decision)
        if self.max_length is None:
            return messages, None, False
        tokens = self._tokens(messages)
        if tokens <= self.max_length:
            return messages, tokens, False
        lo, hi = 0, len(decision.split()) - 1  # largest word count that fits, by bisection
        if self._tokens(self._messages(rec, _cut_decision(decision, 0))) > self.max_length:
            return None, tokens, True
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._tokens(self._messages(rec, _cut_decision(decision, mid))) <= self.max_length:
                lo = mid
            else:
                hi = mid - 1
        return self._messages(rec, _cut_decision(decision, lo)), tokens, True


def run(inputs: list[str], out_dir: Path, *, seed: int = 0, options: dict | None = None) -> dict:
    """Prepare SLDS records: validate, render through the templates, fit to max_length, split."""
    options = options or {}
    renderer = Renderer(options)
    records, paths = [], []
    pairs: dict[str, int] = {}
    over, too_long, cut_ids = 0, 0, []
    for name in inputs:
        path = Path(name)
        paths.append(path)
        n = 0
        for lineno, obj in iter_jsonl(path):
            rec = check_record(obj, f"{path}:{lineno}")
            n += 1
            messages, tokens, cut = renderer(rec)
            over += cut
            if messages is None:
                too_long += 1
                log.warning("%s:%d: prompt and headnote alone exceed max_length=%s; record skipped",
                            path, lineno, renderer.max_length)
                continue
            if cut:
                cut_ids.append(rec["sample_id"])
            pair = f"{rec['decision_language']}->{rec['headnote_language']}"
            pairs[pair] = pairs.get(pair, 0) + 1
            meta = {k: rec[k] for k in FIELDS if k not in ("decision", "headnote")}
            meta.update(truncated=cut, tokens=tokens)
            records.append({"messages": messages, "meta": meta})
        if n == 0:
            raise DataError("data file has no records", where=str(path), fix=f"add records with {', '.join(FIELDS)}")
    if over:
        msg = (f"{over} of {len(records) + too_long} SLDS records exceed max_length="
               f"{renderer.max_length} tokens: {len(cut_ids)} had their decision truncated (headnotes are "
               f"never cut), {too_long} could not fit and were skipped")
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    extra = {
        "language_pairs": dict(sorted(pairs.items())),
        "truncated": {"max_length": renderer.max_length, "over_max_length": over,
                      "decisions_truncated": len(cut_ids), "skipped_too_long": too_long},
        "truncated_sample_ids": cut_ids,
    }
    return finish(records, recipe=NAME, out_dir=out_dir, seed=seed, sources=paths,
                  group_key=lambda r: r["meta"]["decision_id"],
                  ratios=options.get("ratios", DEFAULT_RATIOS), extra=extra)


# ---------------------------------------------------------------- synthetic data

_MONTHS = {"de": "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
           "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
           "it": "gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre dicembre"}
_CANTONS = [("Zürich", "Zurich", "Zurigo"), ("Bern", "Berne", "Berna"), ("Waadt", "Vaud", "Vaud"),
            ("Tessin", "Tessin", "Ticino"), ("Genf", "Genève", "Ginevra"), ("Luzern", "Lucerne", "Lucerna")]
_PLACES = ["Winterthur", "Lausanne", "Bellinzona", "Biel", "Fribourg", "Lugano", "Thun", "Sion"]
_FRAME = {
    "de": ("Urteil vom {date} ({docket})\n\nSachverhalt:\n{facts}\n\nErwägungen:\n"
           "1. Die Beschwerde richtet sich gegen einen Endentscheid einer letzten kantonalen Instanz (Art. 90 BGG) "
           "und wurde fristgerecht eingereicht (Art. 100 Abs. 1 BGG); auf sie ist einzutreten.\n"
           "2. Das Bundesgericht wendet das Recht von Amtes wegen an (Art. 106 Abs. 1 BGG). Die Sachverhalts"
           "feststellung der Vorinstanz kann nur gerügt werden, wenn sie offensichtlich unrichtig ist (Art. 97 Abs. 1 BGG).\n"
           "3. {law}\n4. {outcome}\n\nDemnach erkennt das Bundesgericht:\n1. Die Beschwerde wird {verdict}.\n"
           "2. Die Gerichtskosten von Fr. {costs}.– werden {party} auferlegt.",
           {"ok": ("gutgeheissen", "Die Vorinstanz hat diese Grundsätze verkannt; die Beschwerde ist begründet."),
            "no": ("abgewiesen", "Die Vorinstanz hat diese Grundsätze zutreffend angewendet; die Rügen von "
                                 "{party} erweisen sich als unbegründet.")}),
    "fr": ("Arrêt du {date} ({docket})\n\nFaits :\n{facts}\n\nConsidérant en droit :\n"
           "1. Le recours est dirigé contre une décision finale rendue par une autorité cantonale de dernière "
           "instance (art. 90 LTF) et a été déposé en temps utile (art. 100 al. 1 LTF) ; il est recevable.\n"
           "2. Le Tribunal fédéral applique le droit d'office (art. 106 al. 1 LTF). Les constatations de fait ne "
           "peuvent être critiquées que si elles sont manifestement inexactes (art. 97 al. 1 LTF).\n"
           "3. {law}\n4. {outcome}\n\nPar ces motifs, le Tribunal fédéral prononce :\n1. Le recours est {verdict}.\n"
           "2. Les frais judiciaires, arrêtés à {costs} fr., sont mis à la charge de {party}.",
           {"ok": ("admis", "L'autorité précédente a méconnu ces principes ; le recours est fondé."),
            "no": ("rejeté", "L'autorité précédente a correctement appliqué ces principes ; les griefs de "
                             "{party} sont mal fondés.")}),
    "it": ("Sentenza del {date} ({docket})\n\nFatti:\n{facts}\n\nDiritto:\n"
           "1. Il ricorso è diretto contro una decisione finale di un'autorità cantonale di ultima istanza "
           "(art. 90 LTF) ed è stato presentato tempestivamente (art. 100 cpv. 1 LTF); esso è ammissibile.\n"
           "2. Il Tribunale federale applica d'ufficio il diritto (art. 106 cpv. 1 LTF). L'accertamento dei fatti "
           "può essere censurato solo se è manifestamente inesatto (art. 97 cpv. 1 LTF).\n"
           "3. {law}\n4. {outcome}\n\nPer questi motivi, il Tribunale federale pronuncia:\n1. Il ricorso è {verdict}.\n"
           "2. Le spese giudiziarie di fr. {costs}.– sono poste a carico di {party}.",
           {"ok": ("accolto", "L'autorità inferiore ha disatteso questi principi; il ricorso è fondato."),
            "no": ("respinto", "L'autorità inferiore ha applicato correttamente questi principi; le censure di "
                               "{party} sono infondate.")}),
}
# law_area → docket prefix, and per language: (facts, legal consideration, headnote)
_TOPICS = {
    "civil_law": ("4A", {
        "de": ("A. {party} mietet seit {since} eine Wohnung in {place}. Am {date} kündigte die Vermieterin B. AG "
               "das Mietverhältnis, weil die Wohnung umfassend saniert werden solle.\nB. {party} focht die Kündigung "
               "an. Die Schlichtungsbehörde und das Obergericht des Kantons {canton} wiesen die Anfechtung ab.",
               "Die Kündigung ist anfechtbar, wenn sie gegen den Grundsatz von Treu und Glauben verstösst (Art. 271 "
               "Abs. 1 OR). Eine Kündigung im Hinblick auf umfassende Sanierungsarbeiten ist grundsätzlich nicht "
               "missbräuchlich; sie ist es jedoch, wenn das Projekt im Zeitpunkt der Kündigung nicht ausreichend "
               "ausgereift ist, um zu beurteilen, ob die Anwesenheit des Mieters die Arbeiten erheblich erschwert.",
               "Art. 271 Abs. 1 OR; Kündigung im Hinblick auf Sanierungsarbeiten. Eine Kündigung wegen geplanter "
               "Sanierungsarbeiten verstösst gegen Treu und Glauben, wenn das Projekt im Zeitpunkt der Kündigung "
               "nicht genügend ausgereift ist, um die Erschwerung der Arbeiten durch den Verbleib des Mieters zu "
               "beurteilen (E. 3)."),
        "fr": ("A. {party} loue depuis {since} un appartement à {place}. Le {date}, la bailleresse B. SA a résilié "
               "le bail au motif que l'appartement devait être entièrement rénové.\nB. {party} a contesté le congé. "
               "L'autorité de conciliation et la Cour de justice du canton de {canton} ont rejeté la contestation.",
               "Le congé est annulable lorsqu'il contrevient aux règles de la bonne foi (art. 271 al. 1 CO). Un congé "
               "donné en vue de travaux de rénovation importants n'est en principe pas abusif ; il l'est cependant "
               "lorsque le projet n'est pas suffisamment abouti, au moment de la résiliation, pour apprécier si la "
               "présence du locataire entraverait notablement les travaux.",
               "Art. 271 al. 1 CO ; congé en vue de travaux de rénovation. Le congé donné en vue de travaux de "
               "rénovation contrevient aux règles de la bonne foi lorsque le projet n'est pas suffisamment abouti, "
               "au moment de la résiliation, pour apprécier si le maintien du locataire entraverait les travaux "
               "(consid. 3)."),
        "it": ("A. {party} loca dal {since} un appartamento a {place}. Il {date} la locatrice B. SA ha disdetto il "
               "contratto, adducendo che l'appartamento doveva essere completamente ristrutturato.\nB. {party} ha "
               "contestato la disdetta. L'autorità di conciliazione e il Tribunale d'appello del Cantone {canton} "
               "hanno respinto la contestazione.",
               "La disdetta è annullabile se contrasta con le regole della buona fede (art. 271 cpv. 1 CO). Una "
               "disdetta data in vista di importanti lavori di ristrutturazione non è di principio abusiva; lo è "
               "tuttavia se, al momento della disdetta, il progetto non è sufficientemente maturo per valutare se "
               "la presenza del conduttore ostacolerebbe notevolmente i lavori.",
               "Art. 271 cpv. 1 CO; disdetta in vista di lavori di ristrutturazione. La disdetta data in vista di "
               "lavori di ristrutturazione contrasta con la buona fede se, al momento della disdetta, il progetto "
               "non è sufficientemente maturo per valutare se la permanenza del conduttore ostacolerebbe i lavori "
               "(consid. 3)."),
    }),
    "penal_law": ("6B", {
        "de": ("A. {party} fuhr am {date} mit seinem Personenwagen in {place} innerorts mit {speed} km/h statt der "
               "erlaubten 50 km/h.\nB. Das Bezirksgericht verurteilte ihn wegen grober Verletzung der Verkehrsregeln "
               "zu einer bedingten Geldstrafe. Das Obergericht des Kantons {canton} bestätigte das Urteil.",
               "Eine grobe Verletzung der Verkehrsregeln nach Art. 90 Abs. 2 SVG begeht, wer eine ernstliche Gefahr "
               "für die Sicherheit anderer hervorruft oder in Kauf nimmt. Nach der Rechtsprechung ist innerorts ab "
               "einer Überschreitung von 25 km/h objektiv und in der Regel auch subjektiv ein schwerer Fall anzunehmen.",
               "Art. 90 Abs. 2 SVG; grobe Verkehrsregelverletzung durch Geschwindigkeitsüberschreitung. Innerorts "
               "liegt ab einer Überschreitung der Höchstgeschwindigkeit um 25 km/h in der Regel eine grobe "
               "Verkehrsregelverletzung vor; besondere Umstände können die subjektive Schwere ausnahmsweise "
               "entfallen lassen (E. 3)."),
        "fr": ("A. Le {date}, {party} a circulé au volant de sa voiture à {place}, en localité, à {speed} km/h au "
               "lieu des 50 km/h autorisés.\nB. Le tribunal de police l'a condamné pour violation grave des règles "
               "de la circulation à une peine pécuniaire avec sursis. La Cour pénale du canton de {canton} a "
               "confirmé ce jugement.",
               "Commet une violation grave des règles de la circulation au sens de l'art. 90 al. 2 LCR celui qui crée "
               "un sérieux danger pour la sécurité d'autrui ou en prend le risque. Selon la jurisprudence, un "
               "dépassement de 25 km/h en localité constitue objectivement, et en règle générale subjectivement, un "
               "cas grave.",
               "Art. 90 al. 2 LCR ; violation grave des règles de la circulation par excès de vitesse. En localité, "
               "un dépassement de la vitesse maximale de 25 km/h constitue en règle générale une violation grave ; "
               "des circonstances particulières peuvent exceptionnellement exclure la gravité subjective (consid. 3)."),
        "it": ("A. Il {date} {party} circolava con la sua automobile a {place}, all'interno della località, a "
               "{speed} km/h invece dei 50 km/h consentiti.\nB. La Pretura penale lo ha condannato per grave "
               "infrazione alle norme della circolazione a una pena pecuniaria sospesa condizionalmente. La Corte "
               "di appello del Cantone {canton} ha confermato la sentenza.",
               "Commette una grave infrazione alle norme della circolazione ai sensi dell'art. 90 cpv. 2 LCStr chi "
               "cagiona un serio pericolo per la sicurezza altrui o ne accetta il rischio. Secondo la giurisprudenza, "
               "un superamento di 25 km/h all'interno delle località costituisce oggettivamente, e di regola anche "
               "soggettivamente, un caso grave.",
               "Art. 90 cpv. 2 LCStr; grave infrazione alle norme della circolazione per eccesso di velocità. "
               "All'interno delle località, un superamento della velocità massima di 25 km/h costituisce di regola "
               "una grave infrazione; circostanze particolari possono eccezionalmente escludere la gravità "
               "soggettiva (consid. 3)."),
    }),
    "social_law": ("8C", {
        "de": ("A. {party} arbeitete als Maurer, bis er sich am {date} bei einem Sturz in {place} am Rücken "
               "verletzte.\nB. Die IV-Stelle des Kantons {canton} ermittelte einen Invaliditätsgrad von {degree} % "
               "und verneinte einen Rentenanspruch. Das kantonale Versicherungsgericht wies die Beschwerde ab.",
               "Für den Invaliditätsgrad wird das Einkommen, das die versicherte Person nach Eintritt der "
               "Invalidität zumutbarerweise erzielen könnte, mit dem Einkommen verglichen, das sie ohne Invalidität "
               "erzielen könnte (Art. 16 ATSG). Ein Abzug vom Tabellenlohn setzt konkrete Anhaltspunkte voraus, dass "
               "die versicherte Person ihre Restarbeitsfähigkeit nur mit unterdurchschnittlichem Erfolg verwerten kann.",
               "Art. 16 ATSG; Einkommensvergleich, Abzug vom Tabellenlohn. Ein Abzug vom Tabellenlohn setzt "
               "konkrete Anhaltspunkte voraus, dass die versicherte Person ihre Restarbeitsfähigkeit auf dem "
               "ausgeglichenen Arbeitsmarkt nur mit unterdurchschnittlichem Erfolg verwerten kann (E. 3)."),
        "fr": ("A. {party} travaillait comme maçon jusqu'à ce qu'il se blesse au dos lors d'une chute à {place}, "
               "le {date}.\nB. L'office AI du canton de {canton} a fixé le taux d'invalidité à {degree} % et a nié "
               "le droit à une rente. Le tribunal cantonal des assurances a rejeté le recours.",
               "Pour évaluer le taux d'invalidité, le revenu que l'assuré aurait pu obtenir sans invalidité est "
               "comparé avec celui qu'il pourrait obtenir en exerçant l'activité raisonnablement exigible de lui "
               "(art. 16 LPGA). Un abattement sur le salaire statistique suppose des indices concrets que l'assuré ne "
               "peut mettre en valeur sa capacité résiduelle de travail qu'avec un résultat inférieur à la moyenne.",
               "Art. 16 LPGA ; comparaison des revenus, abattement sur le salaire statistique. Un abattement suppose "
               "des indices concrets que l'assuré ne peut mettre en valeur sa capacité résiduelle de travail sur le "
               "marché équilibré du travail qu'avec un résultat inférieur à la moyenne (consid. 3)."),
        "it": ("A. {party} lavorava come muratore finché il {date} si è ferito alla schiena cadendo a {place}.\n"
               "B. L'Ufficio AI del Cantone {canton} ha accertato un grado d'invalidità del {degree} % e ha negato "
               "il diritto a una rendita. Il Tribunale cantonale delle assicurazioni ha respinto il ricorso.",
               "Per valutare il grado d'invalidità, il reddito che l'assicurato avrebbe potuto conseguire senza "
               "invalidità è confrontato con quello che potrebbe conseguire esercitando l'attività ragionevolmente "
               "esigibile (art. 16 LPGA). Una riduzione del salario statistico presuppone indizi concreti che "
               "l'assicurato possa sfruttare la sua capacità lavorativa residua solo con un risultato inferiore alla media.",
               "Art. 16 LPGA; confronto dei redditi, riduzione del salario statistico. Una riduzione presuppone "
               "indizi concreti che l'assicurato possa sfruttare la sua capacità lavorativa residua sul mercato del "
               "lavoro equilibrato solo con un risultato inferiore alla media (consid. 3)."),
    }),
}


def synthetic_records(n: int = 10, seed: int = 0) -> list[dict]:
    """`n` fake but plausible SLDS records (de/fr/it decisions, all 9 language pairs in turn).

    Every third record reuses the previous decision with another headnote language, as in SLDS
    where one decision has headnotes in several languages: it tests grouping by decision_id.
    """
    rng = random.Random(seed)
    pairs = [(d, h) for d in LANGUAGES for h in LANGUAGES]
    rng.shuffle(pairs)
    out: list[dict] = []
    for i in range(n):
        if i % 3 == 2 and out:
            prev = out[-1]
            head = next(h for h in LANGUAGES if h != prev["headnote_language"])
            out.append({**prev, "sample_id": i, "headnote_language": head,
                        "headnote": _TOPICS[prev["law_area"]][1][head][2]})
            continue
        lang, head = pairs[i % len(pairs)]
        area = rng.choice(sorted(_TOPICS))
        prefix, texts = _TOPICS[area]
        year = rng.randint(2008, 2023)
        li = LANGUAGES.index(lang)
        day, month = rng.randint(1, 28), rng.randint(1, 12)
        date = f"{day}. {_MONTHS[lang].split()[month - 1]} {year - 1}" if lang == "de" else \
            f"{day} {_MONTHS[lang].split()[month - 1]} {year - 1}"
        fill = {"party": rng.choice(["X.________", "Y.________", "Z.________"]), "place": rng.choice(_PLACES),
                "canton": rng.choice(_CANTONS)[li], "date": date, "since": year - rng.randint(5, 20),
                "speed": rng.randint(76, 95), "degree": rng.randint(12, 39), "costs": rng.choice([800, 1500, 3000])}
        facts, law, _ = texts[lang]
        frame, verdicts = _FRAME[lang]
        verdict, outcome = verdicts[rng.choice(["ok", "no"])]
        decision = frame.format(date=f"{rng.randint(1, 28)}. {_MONTHS[lang].split()[month - 1]} {year}"
                                if lang == "de" else f"{rng.randint(1, 28)} {_MONTHS[lang].split()[month - 1]} {year}",
                                docket=f"{prefix}_{rng.randint(10, 999)}/{year}", facts=facts.format(**fill),
                                law=law, outcome=outcome.format(**fill), verdict=verdict,
                                costs=fill["costs"], party=fill["party"])
        out.append({"sample_id": i, "decision_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "decision": decision, "decision_language": lang, "headnote": texts[head][2],
                    "headnote_language": head, "law_area": area, "year": year})
    return out
