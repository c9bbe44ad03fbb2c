"""Results inside other resources: panel components and report conclusions, read as results of their own.

Labs send a urinalysis as one Observation whose blood, leukocyte esterase, nitrite and cell counts are
``component`` entries, and a culture or an ultrasound as a DiagnosticReport whose finding is a
``conclusionCode``. Rules ask for "a red cell count" or "hydronephrosis", not for the shape it came in,
so each such part becomes a *derived* resource that every value set and rule reads exactly like a
separate Observation (or a coded finding): same status, time, interpretation and reference range.

A derived resource keeps a reference that names where it came from
(``Observation/ua1.component[3]``, ``DiagnosticReport/us1.conclusionCode[0]``), so evidence shows the
panel or report a clinician can open, and two components of one panel are two rows, not one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Value sets the reading layer itself asks for (prefetch): panels whose components are results, and the
# reports (urine culture, renal and bladder imaging) whose conclusions are read. Sites add codes to them
# in their site file like to any value set.
PANEL_VALUESET = "observation-panels"
REPORT_VALUESETS = ("urine-culture", "renal-bladder-imaging")

# What a component inherits from its panel; everything that describes the value is the component's own.
_PANEL_CONTEXT = ("resourceType", "id", "meta", "status", "category", "subject", "encounter", "effectiveDateTime",
                  "effectiveInstant", "effectivePeriod", "issued", "performer", "specimen", "method", "device")
_COMPONENT_OWN = ("code", "interpretation", "referenceRange", "dataAbsentReason")
_REPORT_CONTEXT = ("id", "meta", "status", "category", "subject", "encounter", "effectiveDateTime", "effectivePeriod",
                   "issued", "performer")


def derived_results(resource: Mapping[str, Any], ref: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(reference, derived resource) for each result inside ``resource``: none for most resources."""
    rtype = resource.get("resourceType")
    if rtype == "Observation":
        yield from _components(resource, ref)
    elif rtype == "DiagnosticReport":
        yield from _conclusions(resource, ref)


def _components(panel: Mapping[str, Any], ref: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for index, component in enumerate(panel.get("component") or ()):
        if not isinstance(component, Mapping) or not isinstance(component.get("code"), Mapping):
            continue
        derived = {key: panel[key] for key in _PANEL_CONTEXT if key in panel}
        derived.update({key: component[key] for key in _COMPONENT_OWN if key in component})
        derived.update({key: value for key, value in component.items() if key.startswith("value")})
        yield f"{ref}.component[{index}]", derived


def _conclusions(report: Mapping[str, Any], ref: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A report's conclusion as the result of its test, and each coded conclusion as a finding.

    A urine culture report (code 630-4) concluding "No growth" is then a culture result with that value,
    exactly as if the lab had sent an Observation; an ultrasound report concluding hydronephrosis is a
    hydronephrosis finding dated by the report.
    """
    codes = [c for c in report.get("conclusionCode") or () if isinstance(c, Mapping)]
    text = report.get("conclusion") if isinstance(report.get("conclusion"), str) else None
    if not codes and not text:
        return
    context = {key: report[key] for key in _REPORT_CONTEXT if key in report}
    if isinstance(report.get("code"), Mapping):
        value: dict[str, Any] = {"coding": [c for concept in codes for c in concept.get("coding") or ()]}
        shown = text or next((str(c["text"]) for c in codes if isinstance(c.get("text"), str)), None)
        if shown:
            value["text"] = shown
        yield f"{ref}.conclusion", {"resourceType": "Observation", **context, "code": report["code"],
                                    "valueCodeableConcept": value}
    for index, concept in enumerate(codes):
        yield f"{ref}.conclusionCode[{index}]", {"resourceType": "DiagnosticReport", **context, "code": concept}
