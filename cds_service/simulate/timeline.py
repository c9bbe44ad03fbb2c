"""Replay without look-ahead: which moments to replay, and what the record looked like at each.

Pure (facts in, facts out). A historical ketamine/esketamine order becomes an order-sign call at its
``authoredOn`` with the order as the draft; every other resource is visible only if it was recorded
before that moment. What a resource says about the future is cut too: a Condition that abated later was
still active then, a period that ended later had not ended yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cds_service.clinical.timeutil import TimeError, parse_instant
from cds_service.engine.model import MEDICATION_RESOURCES, RuleSet

#: When each type was recorded (first field present wins). The time a result became known (``issued``)
#: beats the time the sample was taken: a urinalysis taken before an order but reported after it was not
#: on the clinician's screen.
RECORDED: dict[str, tuple[str, ...]] = {
    "Observation": ("issued", "effectiveDateTime", "effectiveInstant", "effectivePeriod"),
    "DiagnosticReport": ("issued", "effectiveDateTime", "effectivePeriod"),
    "Condition": ("recordedDate", "onsetDateTime", "onsetPeriod", "abatementDateTime"),
    "MedicationAdministration": ("effectiveDateTime", "effectivePeriod"),
    "MedicationRequest": ("authoredOn",),
    "MedicationStatement": ("dateAsserted", "effectiveDateTime", "effectivePeriod"),
    "MedicationDispense": ("whenHandedOver", "whenPrepared"),
    "Procedure": ("performedDateTime", "performedPeriod"),
    "Encounter": ("period",),
    "ServiceRequest": ("authoredOn", "occurrenceDateTime"),
    "AllergyIntolerance": ("recordedDate", "onsetDateTime"),
    "QuestionnaireResponse": ("authored",),
    "Immunization": ("recorded", "occurrenceDateTime"),
}
TIMELESS = frozenset({"Patient", "Medication"})
NOT_SIGNED = frozenset({"draft", "entered-in-error"})
ORDER_INTENTS = frozenset({"order", "original-order", "reflex-order", "filler-order", "instance-order"})
_CLINICAL_STATUS = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_PERIOD_KEYS = ("period", "effectivePeriod", "onsetPeriod", "performedPeriod")


def _instant(value: Any) -> datetime | None:
    if isinstance(value, Mapping):
        value = value.get("start") or value.get("end")
    if not isinstance(value, str):
        return None
    try:
        return parse_instant(value)
    except TimeError:
        return None


def recorded_at(resource: Mapping[str, Any]) -> datetime | None:
    """When the resource entered the record (None: undated, or a type with no time)."""
    for key in RECORDED.get(str(resource.get("resourceType")), ("meta",)):
        value = resource.get(key)
        if key == "meta" and isinstance(value, Mapping):
            value = value.get("lastUpdated")
        moment = _instant(value)
        if moment is not None:
            return moment
    return None


def as_of(resource: Mapping[str, Any], moment: datetime) -> dict[str, Any] | None:
    """The resource as it stood at ``moment``: None if recorded at or after it, later facts removed.

    Undated resources of a dated type are kept (they were there when the export was taken; dropping them
    would hide data) — the summary counts them, so a committee sees how much of the record that is.
    """
    rtype = resource.get("resourceType")
    if rtype in TIMELESS:
        return dict(resource)
    when = recorded_at(resource)
    if when is not None and when >= moment:
        return None
    view = dict(resource)
    abated = _instant(view.get("abatementDateTime"))
    if abated is not None and abated >= moment:
        view.pop("abatementDateTime")
        view["clinicalStatus"] = {"coding": [{"system": _CLINICAL_STATUS, "code": "active"}]}
    for key in _PERIOD_KEYS:
        period = view.get(key)
        end = _instant({"start": period.get("end")}) if isinstance(period, Mapping) else None
        if isinstance(period, Mapping) and end is not None and end >= moment:
            view[key] = {k: v for k, v in period.items() if k != "end"}
    return view


def visible(resources: Iterable[Mapping[str, Any]], moment: datetime,
            leave_out: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Every resource as it stood at ``moment`` (``leave_out``: ``Type/id`` of the drafts being signed)."""
    out = []
    for resource in resources:
        if f"{resource.get('resourceType')}/{resource.get('id')}" in leave_out:
            continue
        view = as_of(resource, moment)
        if view is not None:
            out.append(view)
    return out


class ExposureCheck:
    """Is a medication resource ketamine or esketamine? The rule set's medication value sets decide."""

    def __init__(self, ruleset: RuleSet, medications: Mapping[str, Mapping[str, Any]]) -> None:
        self.valuesets = [vs for vs in ruleset.valuesets.values() if vs.substance]
        self.medications = medications  # "Medication/id" → Medication

    def _concept_matches(self, concept: Any) -> bool:
        return isinstance(concept, Mapping) and any(vs.match(concept) for vs in self.valuesets)

    def __call__(self, resource: Mapping[str, Any]) -> bool:
        if resource.get("resourceType") not in MEDICATION_RESOURCES:
            return False
        if self._concept_matches(resource.get("medicationCodeableConcept")):
            return True
        ref = resource.get("medicationReference")
        target = ref.get("reference") if isinstance(ref, Mapping) else None
        if not isinstance(target, str):
            return False
        if target.startswith("#"):
            medication = next((c for c in resource.get("contained") or () if isinstance(c, Mapping)
                               and c.get("id") == target[1:]), None)
        else:
            medication = self.medications.get("/".join(target.rstrip("/").split("/")[-2:]))
        if not isinstance(medication, Mapping):
            return False
        if self._concept_matches(medication.get("code")):
            return True
        return any(self._concept_matches(i.get("itemCodeableConcept"))
                   for i in medication.get("ingredient") or () if isinstance(i, Mapping))


@dataclass(frozen=True, slots=True)
class Moment:
    """One replayed call: order-sign at an order's signing (its drafts), or patient-view at a chosen time."""

    hook: str
    at: datetime
    drafts: tuple[Mapping[str, Any], ...] = ()

    @property
    def order_ids(self) -> tuple[str, ...]:
        return tuple(str(d.get("id")) for d in self.drafts)


def order_moments(resources: Sequence[Mapping[str, Any]], exposed: ExposureCheck) -> tuple[list[Moment], int]:
    """One order-sign per signing moment (orders signed at the same instant are signed together).

    Returns the moments and how many ketamine orders had no usable ``authoredOn`` (they cannot be placed
    in time, so they are counted, not replayed).
    """
    by_time: dict[datetime, list[Mapping[str, Any]]] = {}
    undated = 0
    for resource in resources:
        if resource.get("resourceType") != "MedicationRequest" or resource.get("status") in NOT_SIGNED:
            continue
        if resource.get("intent", "order") not in ORDER_INTENTS or not exposed(resource):
            continue
        when = _instant(resource.get("authoredOn"))
        if when is None:
            undated += 1
            continue
        draft = dict(resource)
        draft["status"] = "draft"  # as the EHR sends it on order-sign: not yet signed
        by_time.setdefault(when, []).append(draft)
    moments = [Moment("order-sign", when, tuple(sorted(drafts, key=lambda d: str(d.get("id")))))
               for when, drafts in sorted(by_time.items())]
    return moments, undated


def first_exposure(resources: Iterable[Mapping[str, Any]], exposed: ExposureCheck) -> datetime | None:
    """The earliest recorded ketamine/esketamine event (start of a regular patient-view schedule)."""
    times = [t for r in resources if exposed(r) and (t := recorded_at(r)) is not None]
    return min(times) if times else None


def view_moments(as_of_times: Sequence[datetime], every_days: int | None, start: datetime | None,
                 end: datetime | None) -> list[Moment]:
    """patient-view at fixed times, and/or every ``every_days`` from the first exposure up to ``end``."""
    times = set(as_of_times)
    if every_days and start is not None and end is not None:
        step = timedelta(days=every_days)
        moment = start + step
        while moment <= end:
            times.add(moment)
            moment += step
    return [Moment("patient-view", t) for t in sorted(times)]
