"""Replay one patient's history: every ketamine order signed again, patient-view at chosen times.

Pure: a patient's resources in, compact result rows out (rule ids, versions, indicators, what was missing —
no resource content, so rows can travel between Dask workers and land in CSV files without PHI beyond the
export's own patient ids).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds_service.clinical.timeutil import iso
from cds_service.engine.cards import EXT
from cds_service.engine.evaluate import RuleResult
from cds_service.engine.model import MEDICATION_RESOURCES, RuleSet
from cds_service.engine.trace import Truth
from cds_service.simulate.decision import Verdict, decide
from cds_service.simulate.timeline import (
    TIMELESS,
    ExposureCheck,
    Moment,
    first_exposure,
    order_moments,
    recorded_at,
    view_moments,
    visible,
)


@dataclass(frozen=True, slots=True)
class Plan:
    """What to replay besides the orders: patient-view at fixed times and/or every N days up to ``end``
    (the export's transactionTime; None: the patient's last recorded data)."""

    as_of: tuple[datetime, ...] = ()
    every_days: int | None = None
    end: datetime | None = None


@dataclass(slots=True)
class PatientReplay:
    """One patient's rows, plus what the summary counts about the patient's data."""

    patient: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    undated_orders: int = 0
    undated_resources: int = 0
    has_patient: bool = True


def card_row(card: Mapping[str, Any]) -> dict[str, Any]:
    """What the summary keeps of a card the clinician saw: its rule, version, indicator and summary."""
    rule = card.get("extension", {}).get(f"{EXT}.rule") or {}
    topic = (card.get("source") or {}).get("topic") or {}  # a card of no rule (checks incomplete): its topic
    return {"rule": str(rule.get("id") or topic.get("code") or ""), "version": str(rule.get("version", "")),
            "indicator": str(card.get("indicator", "")), "summary": str(card.get("summary", ""))}


def fired_row(result: RuleResult) -> dict[str, Any]:
    """A rule that fired and shows (its card may be merged into another on the same topic, or folded):
    rule, version, indicator, and the first warning sign — its earliest dated non-medication evidence."""
    signs = [e.time for outcome in result.conditions.values() if outcome.truth is Truth.TRUE
             for e in outcome.evidence
             if e.time is not None and e.ref.split("/", 1)[0] not in MEDICATION_RESOURCES]
    return {"rule": result.rule.id, "version": result.rule.version,
            "indicator": result.fired.indicator if result.fired else "",
            "sign": iso(min(signs)) if signs else None}


def verdict_row(verdict: Verdict) -> dict[str, Any]:
    return {
        "cards": [card_row(card) for card in verdict.cards],
        "fired": [fired_row(result) for result in verdict.evaluation.shown()],
        "undecided": [{"rule": u["rule"], "version": u["version"], "missing": list(u.get("missing") or ())}
                      for u in verdict.undecided],
        "skipped": verdict.skipped,
    }


def replay_patient(
    patient: str,
    resources: Sequence[Mapping[str, Any]],
    rulesets: Mapping[str, RuleSet],
    medications: Mapping[str, Mapping[str, Any]],
    plan: Plan,
    *,
    missing: Mapping[str, str] | None = None,
) -> PatientReplay:
    """Every replayed moment of one patient, decided by each rule set (``rulesets``: label → rule set).

    The moments come from the first rule set's idea of ketamine (its medication value sets), so a
    compared rule set is judged on exactly the same calls. ``missing``: data keys that could not be obtained
    (a FHIR source's failed searches, key → why), passed to every decision as the service does.
    """
    first = next(iter(rulesets.values()))
    exposed = ExposureCheck(first, medications)
    referenced = _referenced_medications(resources, medications)
    out = PatientReplay(patient, has_patient=any(r.get("resourceType") == "Patient" for r in resources))
    out.undated_resources = sum(1 for r in resources
                                if r.get("resourceType") not in TIMELESS and recorded_at(r) is None)
    orders, out.undated_orders = order_moments(resources, exposed)
    end = plan.end
    if end is None and plan.every_days:  # no export time: up to the patient's last recorded data
        end = max((t for r in resources if (t := recorded_at(r)) is not None), default=None)
    views = view_moments(plan.as_of, plan.every_days, first_exposure(resources, exposed), end)
    for moment in sorted([*orders, *views], key=lambda m: (m.at, m.hook)):
        out.rows.append(_decide_moment(patient, moment, resources, referenced, rulesets, missing or {}))
    return out


def _decide_moment(patient: str, moment: Moment, resources: Sequence[Mapping[str, Any]],
                   referenced: Sequence[Mapping[str, Any]], rulesets: Mapping[str, RuleSet],
                   missing: Mapping[str, str]) -> dict[str, Any]:
    leave_out = frozenset(f"MedicationRequest/{oid}" for oid in moment.order_ids)
    view = visible(resources, moment.at, leave_out) + list(referenced)
    row: dict[str, Any] = {"patient": patient, "hook": moment.hook, "at": iso(moment.at),
                           "orders": list(moment.order_ids), "by": {}}
    for label, ruleset in rulesets.items():
        verdict = decide(ruleset, view, hook=moment.hook, now=moment.at, drafts=moment.drafts, patient_id=patient,
                         missing=missing)
        row["by"][label] = verdict_row(verdict)
    return row


def _referenced_medications(resources: Sequence[Mapping[str, Any]],
                            medications: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The export's Medication resources this patient's medication events point at (as an EHR includes them)."""
    wanted = set()
    for resource in resources:
        ref = resource.get("medicationReference")
        target = ref.get("reference") if isinstance(ref, Mapping) else None
        if isinstance(target, str) and not target.startswith("#"):
            wanted.add("/".join(target.rstrip("/").split("/")[-2:]))
    return [medications[key] for key in sorted(wanted) if key in medications]
