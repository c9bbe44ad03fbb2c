"""Cards a clinician reads in five seconds (issue 11 C13) and the incomplete-checks card (A2), engine side."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt
from rulekit import KETAMINE, NOW, admin, obs, record, rule_text, ruleset

from cds_service.clinical.record import PatientRecord
from cds_service.engine.cards import build_cards
from cds_service.engine.compose import DEFAULT_MAX_CARDS
from cds_service.engine.evaluate import evaluate
from cds_service.engine.evidence import MAX_ROWS
from cds_service.engine.incomplete import incomplete_checks_card
from cds_service.engine.loader import load_ruleset
from cds_service.engine.model import RuleSet
from cds_service.synth import generate_cohort

EXT = "org.kbladder-cds"
REPO = Path(__file__).resolve().parents[1]
COMMONMARK = MarkdownIt("commonmark")
GFM = MarkdownIt("commonmark").enable(["table", "strikethrough"])

BODY = """
topic: {topic}
data:
  ketamine: {{resources: [MedicationAdministration, MedicationRequest], valueset: ketamine}}
  blood: {{resources: [Observation], valueset: urine-blood-dipstick}}
conditions:
  exposed: {{count: {{data: ketamine}}}}
  blood: {{count: {{data: blood}}}}
tiers:
  - indicator: {indicator}
    when: {{all: [exposed, blood]}}
"""

CARD = """\
card:
  summary: "{summary}"
  detail: |
    Consistent with ketamine cystitis.
    **What to do**
    - Check the urine.
    - Review the ketamine dose.
  suggestions:
    - id: refer
      label: Refer to urology
      actions:
        - type: create
          description: Referral to urology
          resource:
            {{resourceType: ServiceRequest, status: draft, intent: proposal, code: {{text: Referral to urology}}}}
    - id: own
      label: Action only {rule_id} offers
      actions:
        - type: create
          description: Something else
          resource: {{resourceType: ServiceRequest, status: draft, intent: proposal, code: {{text: {rule_id}}}}}
references:
  - {{id: R1, citation: "Barocas DA et al. Microhematuria: AUA/SUFU Guideline. J Urol 2020;204:778-86", strength: H,
     url: "https://doi.org/10.1097/JU.0000000000001297"}}
  - {{id: R2, citation: "Chan EOT et al. Ketamine-associated uropathy. HKMJ 2022;28:466-74", strength: H}}
"""


def rule(rule_id: str, indicator: str, topic: str, summary: str) -> str:
    body = BODY.format(topic=topic, indicator=indicator)
    return rule_text(body, rule_id=rule_id).split("card:\n")[0] + CARD.format(summary=summary, rule_id=rule_id)


def composed(rules: RuleSet, items: list[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
    evaluation = evaluate(rules, record(items, rules=rules), hook="patient-view", now=NOW)
    return build_cards(evaluation, patient_id="p1", compose=True, **kwargs)


PATIENT = [admin("-10d"), admin("-3d"), obs("LOINC#5794-3", "-1d", "2+")]


def test_one_card_per_topic_lists_the_weaker_findings_in_the_strongest(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, {
        "a.yaml": rule("T-01", "warning", "urinary", "Urinary symptoms after ketamine"),
        "b.yaml": rule("T-02", "critical", "urinary", "Blood in urine after ketamine: urgent urology review"),
    })
    (card,) = composed(rules, PATIENT)
    assert card["indicator"] == "critical"
    assert card["summary"] == "Blood in urine after ketamine: urgent urology review"
    assert card["source"]["topic"]["code"] == "T-02"
    assert "**Also on this topic**\n\n- Urinary symptoms after ketamine (T-01 v1.0.0, warning)" in card["detail"]
    assert [(r["id"], r["indicator"]) for r in card["extension"][f"{EXT}.rules"]] == [
        ("T-02", "critical"), ("T-01", "warning")]
    assert "Rules T-02 v1.0.0 (critical), T-01 v1.0.0 (warning)" in card["detail"]
    labels = [s["label"] for s in card["suggestions"]]
    assert labels.count("Refer to urology") == 1
    assert {"Action only T-01 offers", "Action only T-02 offers"} <= set(labels)


def test_suggestions_are_offered_once_across_cards(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, {
        "a.yaml": rule("T-01", "warning", "urinary", "Blood in urine"),
        "b.yaml": rule("T-02", "critical", "renal", "Kidney function falling"),
    })
    cards = composed(rules, PATIENT)
    assert [c["source"]["topic"]["code"] for c in cards] == ["T-02", "T-01"]
    assert [s["label"] for s in cards[0]["suggestions"]] == ["Refer to urology", "Action only T-02 offers"]
    assert [s["label"] for s in cards[1]["suggestions"]] == ["Action only T-01 offers"]


def test_at_most_three_cards_and_the_rest_folded_into_the_strongest(tmp_path: Path) -> None:
    indicators = ["info", "warning", "critical", "info", "warning"]
    rules = ruleset(tmp_path, {f"{i}.yaml": rule(f"T-0{i}", ind, f"topic{i}", f"Finding {i}")
                               for i, ind in enumerate(indicators, start=1)})
    cards = composed(rules, PATIENT)
    assert len(cards) == DEFAULT_MAX_CARDS == 3
    assert [c["indicator"] for c in cards] == ["critical", "warning", "warning"]
    lead = cards[0]
    assert "**Other alerts**\n\n- Finding 1 (T-01 v1.0.0, info)\n- Finding 4 (T-04 v1.0.0, info)" in lead["detail"]
    assert {r["id"] for r in lead["extension"][f"{EXT}.rules"]} == {"T-03", "T-01", "T-04"}
    # Folded cards' own actions stay available, once.
    assert {"Action only T-01 offers", "Action only T-04 offers"} <= {s["label"] for s in lead["suggestions"]}
    assert len(composed(rules, PATIENT, max_cards=5)) == 5


def test_evidence_is_decisive_and_newest_first_and_never_long(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, {"a.yaml": rule("T-01", "warning", "urinary", "Blood in urine")})
    sessions = [admin(f"-{d}d", dose="35 mg") for d in range(60, 0, -2)]  # 30 administrations
    (card,) = composed(rules, [*sessions, obs("LOINC#5794-3", "-1d", "2+")])
    table = card["detail"].split("**Evidence**\n\n")[1].split("\n\n")[0].splitlines()
    rows = table[2:]
    assert len(rows) <= MAX_ROWS
    assert "Hemoglobin" in rows[0] or "blood" in rows[0].lower()  # the finding that decided, first
    dates = [r.split("|")[1].strip() for r in rows[1:]]
    assert dates == sorted(dates, reverse=True)  # newest administration next
    hidden = 30 - (len(rows) - 1)
    assert f"and {hidden} earlier administrations (total {hidden * 35:,} mg)" in card["detail"]
    refs = [e["reference"] for e in card["extension"][f"{EXT}.evidence"]]
    assert len(refs) == len(set(refs))


def test_references_are_one_compact_line(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, {"a.yaml": rule("T-01", "warning", "urinary", "Blood in urine")})
    (card,) = composed(rules, PATIENT)
    last = card["detail"].rstrip().splitlines()[-1]
    assert last == ("Rule T-01 v1.0.0 (warning) · References: "
                    "[Barocas 2020](https://doi.org/10.1097/JU.0000000000001297); Chan 2022")


def assert_renders_the_same(markdown: str) -> None:
    """Lists are lists and the rest is identical in CommonMark and GFM (tables are GFM only)."""
    gfm, cm = GFM.render(markdown), COMMONMARK.render(markdown)
    bullets = len(re.findall(r"(?m)^\s{0,3}[-*] ", markdown))
    assert gfm.count("<li>") == cm.count("<li>") == bullets, markdown
    if "| Date |" in markdown:
        assert "<table>" in gfm
    without_tables = re.sub(r"(?ms)^\| Date \|.*?(?=\n\n|\Z)", "", markdown)
    assert GFM.render(without_tables) == COMMONMARK.render(without_tables), markdown


def test_detail_markdown_renders_the_same_in_commonmark_and_gfm(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, {f"{i}.yaml": rule(f"T-0{i}", ind, topic, f"Finding {i}")
                               for i, (ind, topic) in enumerate(
                                   [("critical", "a"), ("warning", "a"), ("warning", "b"), ("info", "c"),
                                    ("info", "d")], start=1)})
    for card in composed(rules, PATIENT):
        assert_renders_the_same(card["detail"])


@pytest.fixture(scope="module")
def project() -> RuleSet:
    loaded = load_ruleset([REPO / "rules"])
    assert loaded.ruleset is not None
    return loaded.ruleset


AUTHOR_NOTES = re.compile(r"verified|UNVERIFIED|TODO|clinical\.md|value set|valueset", re.IGNORECASE)
MACHINE = re.compile(
    r"(?<![\w.])\d(?:\.\d+)?e[+-]?\d+|(?<![\w.])\d+\.\d{3,}(?![\w.])|\[HPF\]|umol/L|\{score\}|\{1\.73_m2\}")


def test_every_cohort_card_reads_cleanly(project: RuleSet) -> None:
    """Over the whole synthetic cohort and every hook: ≤ 3 cards, one per topic, no suggestion twice,
    no author notes or machine numbers, evidence rows unique, Markdown the same in CommonMark and GFM."""
    cohort = generate_cohort(1, None)
    seen_cards = 0
    for patient in cohort.patients:
        from cds_service.fhir.parse import bundle_resources, parse_resources

        valid, _ = parse_resources(bundle_resources(patient.bundle))
        for hook in ("patient-view", "order-sign"):
            drafts = list(patient.draft_orders) if hook != "patient-view" else []
            rec = PatientRecord(valid, drafts=drafts, ordinal_codes=project.ordinal_codes)
            evaluation = evaluate(project, rec, hook=hook, now=cohort.now)
            cards = build_cards(evaluation, patient_id=patient.id, compose=True, max_cards=DEFAULT_MAX_CARDS)
            assert len(cards) <= DEFAULT_MAX_CARDS
            topics = [next(r for r in project.rules if r.id == c["source"]["topic"]["code"]).topic for c in cards]
            assert len(topics) == len(set(topics)), (patient.id, hook, topics)
            labels = [s["label"] for c in cards for s in c.get("suggestions", [])]
            assert len(labels) == len(set(labels)), (patient.id, hook, labels)
            for card in cards:
                seen_cards += 1
                text = card["summary"] + "\n" + card["detail"] + "\n".join(
                    a["description"] for s in card.get("suggestions", []) for a in s["actions"])
                assert not AUTHOR_NOTES.search(text), (patient.id, AUTHOR_NOTES.search(text))
                words = re.sub(r"\]\(https?://[^)]*\)", "]", text)  # links may hold DOIs like 10.1097
                assert not MACHINE.search(words), (patient.id, MACHINE.search(words))
                refs = [e["reference"] for e in card["extension"].get(f"{EXT}.evidence", [])]
                assert len(refs) == len(set(refs)), (patient.id, refs)
                assert_renders_the_same(card["detail"])
    assert seen_cards > 40


# ---------------------------------------------------------------- the incomplete-checks card (A2)


def evaluation_with(project: RuleSet, items: list[dict[str, Any]], unavailable: dict[str, str],
                    hook: str = "patient-view", drafts: list[dict[str, Any]] | None = None) -> Any:
    rec = record(items, drafts=drafts or [], rules=project)
    rec.unavailable.update(unavailable)
    return evaluate(project, rec, hook=hook, now=NOW)


def test_known_exposure_and_an_undecided_warning_rule_give_one_info_card(project: RuleSet) -> None:
    why = {"Observation": "could not be retrieved (HTTP 500)"}
    evaluation = evaluation_with(project, [admin("-10d"), admin("-3d")], why)
    draft = incomplete_checks_card(evaluation, why)
    assert draft is not None
    assert draft.indicator == "info"
    assert draft.summary == "Ketamine bladder checks incomplete: test results could not be retrieved"
    assert "KB-02" in draft.source_display
    assert "- Test results: could not be retrieved (HTTP 500)" in draft.body
    cards = build_cards(evaluation, patient_id="p1", compose=True, extra=[draft])
    assert [c["source"]["topic"]["code"] for c in cards] == ["checks-incomplete"]
    assert re.search(r"Checks not completed: .*KB-02 v\d", cards[0]["detail"])


def test_esketamine_is_named_as_esketamine(project: RuleSet) -> None:
    why = {"Observation": "could not be retrieved (HTTP 500)"}
    evaluation = evaluation_with(project, [admin("-10d", medication="RXNORM#2201625", dose="56 mg")], why)
    draft = incomplete_checks_card(evaluation, why)
    assert draft is not None and draft.summary.startswith("Esketamine bladder checks incomplete")


def test_no_known_exposure_no_card(project: RuleSet) -> None:
    why = {"MedicationAdministration": "could not be retrieved (HTTP 500)"}
    evaluation = evaluation_with(project, [obs("LOINC#5794-3", "-1d", "2+")], why)
    assert evaluation.undecided()
    assert incomplete_checks_card(evaluation, why) is None


def test_a_ketamine_draft_is_known_exposure(project: RuleSet) -> None:
    why = {"Observation": "could not be retrieved (HTTP 500)"}
    drafts = [{"MedicationRequest": {"id": "d1", "medication": KETAMINE, "dose": "35 mg"}}]
    evaluation = evaluation_with(project, [], why, hook="order-sign", drafts=drafts)
    draft = incomplete_checks_card(evaluation, why)
    assert draft is not None and "test results" in draft.summary


def test_nothing_undecided_no_card(project: RuleSet) -> None:
    evaluation = evaluation_with(project, [admin("-10d")], {})
    assert incomplete_checks_card(evaluation, {}) is None



def test_short_citations() -> None:
    from cds_service.engine.cards import short_citation
    from cds_service.engine.model import Reference

    assert short_citation(Reference("R1", "Chan EOT et al. Ketamine-associated uropathy. HKMJ 2022;28:466-74", "H")) \
        == "Chan 2022"
    assert short_citation(Reference("R2", "KDIGO 2012 Clinical Practice Guideline for AKI", "H", "https://kdigo.org")) \
        == "[KDIGO 2012](https://kdigo.org)"
    label = "SPRAVATO (esketamine) nasal spray US prescribing information, §5.9 Ulcerative or Interstitial Cystitis"
    assert short_citation(Reference("R3", label, "H")) == "SPRAVATO (esketamine) nasal spray US…"
