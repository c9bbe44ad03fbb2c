"""KB-02 as a minimal hand-written Python function over raw FHIR dicts: the logic floor of the bench.

The same logic as the CQL port (kb02_cql.py) and the same code lists, with nothing an engine gives:
no traces, no missing-data handling, no unit conversion beyond mg/dL, no evidence. What our engine costs
above this is the price of those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from cds_service.clinical.findings import ordinal_of_text
from cds_service.clinical.valueset import ValueSet

_RESULT = frozenset({"final", "amended", "corrected", "preliminary"})
_GIVEN = frozenset({"completed", "in-progress"})
_NOT_A_PROBLEM = frozenset({"refuted", "entered-in-error"})


@dataclass(frozen=True, slots=True)
class Codes:
    exposure: frozenset[tuple[str, str]]
    dipstick: frozenset[tuple[str, str]]
    positive: frozenset[tuple[str, str]]
    rbc: frozenset[tuple[str, str]]
    gross: frozenset[tuple[str, str]]
    pain: frozenset[tuple[str, str]]
    creatinine: frozenset[tuple[str, str]]

    @classmethod
    def of(cls, vs: Mapping[str, ValueSet]) -> Codes:
        def keys(name: str, kinds: tuple[str, ...] | None = None) -> frozenset[tuple[str, str]]:
            return frozenset(k for k, c in vs[name].concepts.items() if kinds is None or c.kind in kinds)

        results = vs["urine-dipstick-results"].concepts
        return cls(keys("ketamine") | keys("esketamine"), keys("urine-blood-dipstick"),
                   frozenset(k for k, c in results.items() if c.ordinal is not None and c.ordinal >= 0.5),
                   keys("urine-rbc-microscopy"), keys("gross-hematuria"),
                   keys("luts", ("dysuria", "suprapubic_pain")), keys("creatinine"))


def _coded(concept: Any, codes: frozenset[tuple[str, str]]) -> bool:
    return isinstance(concept, dict) and any(
        (c.get("system"), c.get("code")) in codes for c in concept.get("coding") or ())


def _when(resource: Mapping[str, Any], *names: str) -> datetime | None:
    for name in names:
        value = resource.get(name)
        if isinstance(value, dict):
            value = value.get("start")
        if isinstance(value, str):
            return datetime.fromisoformat(value if "T" in value else value + "T00:00:00+00:00")
    return None


def kb02(resources: Sequence[Mapping[str, Any]], codes: Codes, now: datetime) -> str | None:
    """'critical', 'warning' or None."""
    sessions = sorted(
        at for r in resources if r.get("resourceType") == "MedicationAdministration"
        and r.get("status") in _GIVEN and _coded(r.get("medicationCodeableConcept"), codes.exposure)
        and (at := _when(r, "effectiveDateTime", "effectivePeriod")) is not None
        and now - timedelta(days=365) <= at <= now)
    if not sessions:
        return None
    start = sessions[0]
    for before, after in pairwise(sessions):
        if after - before > timedelta(days=28):
            start = after
    end = sessions[-1] + timedelta(days=90)
    dipstick = heavy = pain = visible = False
    rbc = 0.0
    creatinine: list[tuple[datetime, float]] = []
    for r in resources:
        kind = r.get("resourceType")
        if kind == "Observation" and r.get("status") in _RESULT:
            at = _when(r, "effectiveDateTime", "effectivePeriod")
            if at is None:
                continue
            code = r.get("code")
            if _coded(code, codes.creatinine) and "valueQuantity" in r:
                q = r["valueQuantity"]
                creatinine.append((at, q["value"] * (88.42 if q.get("unit") in ("mg/dL", "mg/dl") else 1)))
            elif start <= at <= end:
                if _coded(code, codes.dipstick) and (_coded(r.get("valueCodeableConcept"), codes.positive)
                                                     or (ordinal_of_text(r.get("valueString")) or 0) >= 0.5):
                    dipstick = True
                elif _coded(code, codes.rbc) and "valueQuantity" in r:
                    rbc = max(rbc, r["valueQuantity"].get("value", 0))
        elif kind == "Condition":
            status = {c.get("code") for c in (r.get("verificationStatus") or {}).get("coding") or ()}
            at = _when(r, "onsetDateTime", "onsetPeriod", "recordedDate")
            if status & _NOT_A_PROBLEM or at is None or not start <= at <= end:
                continue
            visible = visible or _coded(r.get("code"), codes.gross)
            pain = pain or _coded(r.get("code"), codes.pain)
    heavy = rbc > 25
    blood = dipstick or rbc >= 3
    before = [v for at, v in sorted(creatinine) if start - timedelta(days=365) <= at <= start]
    renal = any(start <= at <= end and v > 100 for at, v in creatinine) and not (before and before[-1] > 100)
    if visible or heavy or (blood and (pain or renal)):
        return "critical"
    return "warning" if blood else None
