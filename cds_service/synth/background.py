"""Overlay a Synthea background record under a synthetic patient (optional, for realism).

Takes a background patient's Conditions, Observations and Encounters, re-ids them under
our patient id and points them at our Patient. Anything the rules read is left out
(urinary, renal, liver, weight, symptom scores, substance use — by code and by wording),
so the overlay never changes a scenario's expected cards. Narrative, notes, identifiers
and reference displays are dropped: background names and addresses never reach the
output or the logs (only counts are logged).

Dates are shifted by the difference of the two birth dates, so every background event
happens at the same age in our patient's life; events after ``now`` are dropped (and so
is anything about a death: some Synthea records end with one).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cds_service.synth.builder import iso

log = logging.getLogger(__name__)

TYPES = ("Encounter", "Condition", "Observation")
RECENT_YEARS = 5  # Encounters and Observations from the last 5 years; Conditions from any time

# Codes the rules read (clinical.md §3) — never taken from a background record.
_RULE_CODES = frozenset({
    # LOINC §3.2
    "24357-6", "5794-3", "13945-1", "46419-8", "5799-2", "5821-4", "46702-7", "5802-4", "50558-6", "5804-0",
    "20454-5", "2888-6", "5769-5", "630-4", "2160-0", "14682-9", "38483-4", "59826-8", "98979-8", "98980-6",
    "62238-1", "94677-2", "88293-6", "88294-4", "77147-7", "33914-3", "48642-3", "48643-1", "50044-7", "70969-1",
    "1742-6", "1920-8", "6768-6", "2324-2", "1975-2", "29463-7", "3167-4", "80976-4", "81090-3", "19501-6",
    # SNOMED §3.3
    "162116003", "300471006", "75088002", "49650001", "139394000", "34436003", "197941005", "197940006",
    "197939009", "367661000119102", "368971000119101", "267064002", "236648008", "61033006", "236633002",
    "38822007", "33655002", "197834003", "68566005", "307426000", "197927001", "45816000", "43064006",
})
_RULE_CODE_PREFIXES = ("R30", "R31", "R32", "R33", "R35", "R39", "R10.2", "N13", "N17", "N18", "N30", "N32",
                       "N39", "R80", "R82", "R94.4", "R74", "K83", "T41", "F16", "F19")
_RULE_WORDS = re.compile(
    r"urin|bladder|cystitis|kidney|renal|nephr|hemat|haemat|creatinin|glomerul|alanine|aspartate|alkaline|"
    r"bilirubin|glutamyl|liver|hepat|biliar|bile|chole|prostat|incontinen|retention|pelvic|dysuria|nocturia|"
    r"micturi|body weight|ketamine|substance|abuse|misuse|dependence|overdose|drug|dialysis|death|deceased|died",
    re.IGNORECASE,
)
_DROP_KEYS = frozenset({"text", "meta", "identifier", "note", "contained", "extension", "modifierExtension"})
_TIME_KEYS = frozenset({"effectiveDateTime", "issued", "onsetDateTime", "abatementDateTime", "recordedDate",
                        "start", "end", "effectiveInstant"})


@dataclass(frozen=True, slots=True)
class Background:
    """One background record: an anonymous label (never the file name), gender and resources."""

    label: str
    gender: str | None
    birth: datetime | None
    patient_ref: str
    resources: tuple[Mapping[str, Any], ...]


def load_backgrounds(directory: Path) -> list[Background]:
    """Every ``*.json.gz`` (or ``*.json``) transaction Bundle in ``directory``, in file-name order.

    A missing folder, or one without a bundle holding a Patient, is an error: an overlay that
    silently overlays nothing would pass for one that worked.
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"background folder not found: {directory}")
    found = []
    for path in sorted([*directory.glob("*.json.gz"), *directory.glob("*.json")]):
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.name.endswith(".gz") else raw
        bundle = json.loads(data)
        patient, patient_ref = None, ""
        resources = []
        for entry in bundle.get("entry") or ():
            resource = entry.get("resource") or {}
            if resource.get("resourceType") == "Patient" and patient is None:
                patient = resource
                patient_ref = entry.get("fullUrl") or f"Patient/{resource.get('id')}"
            elif resource.get("resourceType") in TYPES:
                resources.append((entry.get("fullUrl"), resource))
        if patient is None:
            continue
        label = "bg-" + hashlib.sha256(raw).hexdigest()[:10]
        refs = {patient_ref, f"Patient/{patient.get('id')}"}
        birth = _instant(patient["birthDate"]) if isinstance(patient.get("birthDate"), str) else None
        found.append(Background(label, patient.get("gender"), birth, "|".join(sorted(refs)),
                                tuple({"fullUrl": u, "resource": r} for u, r in resources)))
        log.info("background %s: %d candidate resources", label, len(resources))
    if not found:
        raise ValueError(f"no Synthea bundle with a Patient in background folder {directory}")
    return found


def _codes(concept: Any) -> list[tuple[str, str, str]]:
    if not isinstance(concept, Mapping):
        return []
    out = []
    for coding in concept.get("coding") or ():
        if isinstance(coding, Mapping):
            out.append((str(coding.get("code") or ""), str(coding.get("display") or ""), str(coding.get("system"))))
    if concept.get("text"):
        out.append(("", str(concept["text"]), ""))
    return out


def rule_relevant(resource: Mapping[str, Any]) -> bool:
    """True when the rules could read this resource (so it must not be overlaid)."""
    components = [c for c in resource.get("component") or () if isinstance(c, Mapping)]
    concepts = [resource.get("code"), *(c.get("code") for c in components)]
    concepts += list(resource.get("type") or ()) + list(resource.get("reasonCode") or ())
    concepts.append(resource.get("valueCodeableConcept"))
    for concept in concepts:
        for code, display, _ in _codes(concept):
            if code in _RULE_CODES or code.startswith(_RULE_CODE_PREFIXES) or _RULE_WORDS.search(display):
                return True
    categories = [c for c in resource.get("category") or () if isinstance(c, Mapping)]
    return any(_RULE_WORDS.search(str(c.get("text") or "")) for c in categories)


def _when(resource: Mapping[str, Any]) -> datetime | None:
    for key in ("effectiveDateTime", "onsetDateTime", "recordedDate", "issued"):
        if isinstance(resource.get(key), str):
            return _instant(resource[key])
    period = resource.get("period") or resource.get("effectivePeriod")
    if isinstance(period, Mapping) and isinstance(period.get("start"), str):
        return _instant(period["start"])
    return None


def _instant(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def overlay(background: Background, pid: str, now: datetime, birth: datetime) -> list[dict[str, Any]]:
    """Background resources re-id'd under ``pid``, moved to the same ages for a patient born at ``birth``."""
    shift = birth - background.birth if background.birth else timedelta(0)
    recent = now - timedelta(days=365 * RECENT_YEARS)
    chosen: list[tuple[str | None, Mapping[str, Any]]] = []
    for entry in background.resources:
        resource = entry["resource"]
        if rule_relevant(resource):
            continue
        when = _when(resource)
        if when is None:
            continue
        when += shift
        if not birth <= when < now - timedelta(days=1):
            continue
        if resource["resourceType"] != "Condition" and when < recent:
            continue
        chosen.append((entry.get("fullUrl"), resource))
    id_map: dict[str, str] = {}
    for counter, (full_url, resource) in enumerate(chosen, start=1):
        new_ref = f"{resource['resourceType']}/{pid}-b{counter}"
        for old in (full_url, f"{resource['resourceType']}/{resource.get('id')}"):
            if old:
                id_map[old] = new_ref
    patient_refs = set(background.patient_ref.split("|"))
    out = []
    for full_url, resource in chosen:
        new_ref = id_map[full_url or f"{resource['resourceType']}/{resource.get('id')}"]
        copy = _rewrite(resource, id_map, patient_refs, f"Patient/{pid}", shift)
        if not isinstance(copy, dict):
            continue
        copy["id"] = new_ref.split("/", 1)[1]
        _clamp(copy, now)
        out.append(copy)
    return out


def _rewrite(value: Any, id_map: Mapping[str, str], patient_refs: set[str], patient: str, shift: timedelta) -> Any:
    """Deep copy with references remapped (or dropped when not overlaid), narrative dropped, times shifted."""
    if isinstance(value, Mapping):
        if "reference" in value:
            target = value.get("reference")
            if target in patient_refs:
                return {"reference": patient}
            if isinstance(target, str) and target in id_map:
                return {"reference": id_map[target]}
            return None  # a practitioner, organisation, claim… that is not overlaid
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in _DROP_KEYS:
                continue
            if key in _TIME_KEYS and isinstance(item, str):
                moment = _instant(item)
                if moment is not None:
                    out[key] = iso(moment + shift) if "T" in item else (moment + shift).strftime("%Y-%m-%d")
                    continue
            new = _rewrite(item, id_map, patient_refs, patient, shift)
            if new is None or new == {} or new == []:
                continue
            out[key] = new
        return out
    if isinstance(value, list):
        items = [_rewrite(item, id_map, patient_refs, patient, shift) for item in value]
        return [item for item in items if item not in (None, {}, [])]
    return value


def _clamp(resource: dict[str, Any], now: datetime) -> None:
    """An abatement or period end after ``now`` (shifted data) is dropped: it has not happened yet."""
    for key in ("abatementDateTime",):
        moment = _instant(resource.get(key, "")) if isinstance(resource.get(key), str) else None
        if moment is not None and moment > now:
            resource.pop(key)
    for key in ("period", "effectivePeriod"):
        period = resource.get(key)
        if isinstance(period, dict) and isinstance(period.get("end"), str):
            end = _instant(period["end"])
            if end is not None and end > now:
                period.pop("end")
