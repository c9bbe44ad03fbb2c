"""The visible "checks incomplete" card: undecided is shown when it matters, never silence.

An EHR shows ``{"cards": []}`` as "All clear". When a patient is known to be exposed to ketamine
or esketamine — from the data that could be read, or a draft order being placed — and a rule that
could warn could not be decided, the response carries one info card saying, in a clinician's
words, which checks could not be completed and which data was unavailable. Without known exposure
the gap stays in the response ``extension`` only, so an outage does not put a card on every chart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cds_service.engine.cards import EXT, CardDraft
from cds_service.engine.evaluate import Evaluation, RuleResult
from cds_service.engine.model import MEDICATION_RESOURCES

TOPIC = "checks-incomplete"
SUMMARY_MAX = 139

# What a clinician calls the data of each resource type.
DATA_WORDS: dict[str, str] = {
    "Observation": "test results",
    "Condition": "diagnoses and problems",
    "MedicationAdministration": "medication administrations",
    "MedicationRequest": "medication orders",
    "MedicationStatement": "medication history",
    "MedicationDispense": "medication dispensing",
    "Medication": "medication product details",
    "QuestionnaireResponse": "symptom questionnaires",
    "Procedure": "procedures",
    "DiagnosticReport": "test reports",
    "AllergyIntolerance": "allergies",
    "Patient": "patient details",
}


def known_exposure(evaluation: Evaluation) -> str | None:
    """"ketamine" or "esketamine" when any rule saw an exposure (given or being ordered), else None."""
    substances: set[str] = set()
    for result in evaluation.results:
        ctx = result.context
        if ctx is None:
            continue
        for key, data in result.rule.data.items():
            substance = data.valueset.substance
            if data.is_medication and substance in ("ketamine", "esketamine") and ctx.sessions(key):
                substances.add(substance)
    if not substances:
        return None
    return "esketamine" if substances == {"esketamine"} else "ketamine"


def could_warn(result: RuleResult) -> bool:
    """An active rule with a warning or critical tier: its silence would read as "all clear"."""
    return result.rule.status == "active" and any(t.indicator in ("warning", "critical") for t in result.rule.tiers)


def unavailable_types(result: RuleResult, unavailable: Mapping[str, str]) -> list[str]:
    """Resource types the rule reads that could not be (fully) obtained."""
    reads = {rtype for data in result.rule.data.values() for rtype in data.resources}
    types = reads & set(unavailable)
    if reads & MEDICATION_RESOURCES and "Medication" in unavailable:
        types.add("Medication")
    return sorted(types)


def _words(types: Sequence[str]) -> str:
    words = list(dict.fromkeys(DATA_WORDS.get(t, t) for t in types))
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def incomplete_checks_card(
    evaluation: Evaluation,
    unavailable: Mapping[str, str],
) -> CardDraft | None:
    """The one info card for undecided rules that could warn, or None (no known exposure, nothing undecided).

    ``unavailable`` maps resource types (``Medication`` too) to why they could not be obtained, in words
    ("could not be retrieved (HTTP 500)", "2 could not be read (malformed) and were skipped").
    """
    undecided = [r for r in evaluation.undecided() if could_warn(r)]
    drug = known_exposure(evaluation) if undecided else None
    if drug is None:
        return None
    per_rule = {r.rule.id: unavailable_types(r, unavailable) for r in undecided}
    types = sorted({t for ts in per_rule.values() for t in ts})
    what = _words(types)
    label = "Ketamine bladder checks incomplete" if drug == "ketamine" else "Esketamine bladder checks incomplete"
    verbs = {"read" if "could not be read" in unavailable[t] else "retrieved" for t in types}
    verb = " or ".join(sorted(verbs, reverse=True)) or "retrieved"
    summary = f"{label}: {what} could not be {verb}" if what else f"{label}: some data is missing or unclear"
    if len(summary) > SUMMARY_MAX:
        summary = f"{label}: some data could not be retrieved"
    checks = [f"{r.rule.title} ({r.rule.id} v{r.rule.version})" for r in undecided]
    reasons = [f"{DATA_WORDS.get(t, t).capitalize()}: {unavailable[t]}" for t in types]
    unclear = sorted({m for r in undecided if not per_rule[r.rule.id] for m in r.missing})
    body = [
        f"Some checks for {drug}-related bladder and kidney injury could not be completed because data "
        "could not be retrieved or read. **No warning from these checks is not an all-clear.**",
        "**Checks not completed**\n\n" + "\n".join(f"- {c}" for c in checks),
    ]
    if reasons or unclear:
        body.append("**Data not available**\n\n" + "\n".join(f"- {line}" for line in [*reasons, *unclear]))
    body.append(
        "**What to do**\n\n"
        "- Review recent urine tests, kidney function and urinary symptoms in the record directly.\n"
        "- Open the chart again when the connection to the record is restored."
    )
    rules = [{"id": r.rule.id, "version": r.rule.version, "title": r.rule.title, "status": "undecided"}
             for r in undecided]
    return CardDraft(
        indicator="info",
        summary=summary,
        body="\n\n".join(body),
        topic=TOPIC,
        source_code=TOPIC,
        source_display="Checks incomplete: " + ", ".join(f"{r.rule.id} v{r.rule.version}" for r in undecided),
        rules=[],
        extension={f"{EXT}.incomplete": [{**rule, "missing": list(r.missing)} for rule, r in zip(rules, undecided,
                                                                                                strict=True)]},
        undecided=rules,
    )
