"""KB-02 written in CQL, from the same value sets as the rule file, for the CQL engine row of the bench.

The CQL follows KB-02's logic: exposure (ketamine or esketamine administered in the last 365 days), the
latest course (sessions no more than 28 days apart), the on-treatment window (course start to 90 days
after the last session), dipstick blood ≥ trace, RBC ≥ 3 /HPF, > 25 /HPF, visible haematuria,
dysuria/suprapubic pain, and a new creatinine above 100 µmol/L; critical, else warning. What it leaves
out, as a hand-written port would: unit conversion (values are taken in the rule's units), text matching
of uncoded medications, and MedicationRequest/Statement exposure (the benchmark patients have none).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cds_service.clinical.findings import _ORDINAL_WORDS
from cds_service.clinical.valueset import ValueSet

_TEMPLATE = """library KB02 version '1.0.0'
using FHIR version '4.0.1'

parameter "Now" DateTime

context Patient

define function "Keys"(cc FHIR.CodeableConcept):
  cc.coding C return (C.system.value + '|' + C.code.value)

define function "Coded"(cc FHIR.CodeableConcept, codes List<String>):
  exists (("Keys"(cc)) K where K in codes)

define function "When"(effective Choice<FHIR.dateTime, FHIR.Period, FHIR.instant>):
  Coalesce((effective as FHIR.dateTime).value, (effective as FHIR.Period).start.value,
           (effective as FHIR.instant).value)

define "Sessions":
  ([MedicationAdministration] MA
    where MA.status.value in {{ 'completed', 'in-progress' }}
      and "Coded"(MA.medication as FHIR.CodeableConcept, {exposure})
    return "When"(MA.effective))
    S where S in Interval["Now" - 365 days, "Now"]

define "Exposed": exists "Sessions"

define "Course Start":
  Max("Sessions" S where not exists ("Sessions" P where P < S and P >= S - 28 days))

define "On Treatment": Interval["Course Start", Max("Sessions") + 90 days]

define "Results":
  [Observation] O where O.status.value in {{ 'final', 'amended', 'corrected', 'preliminary' }}
    and "When"(O.effective) in "On Treatment"

define "Dipstick Blood":
  exists ("Results" O where "Coded"(O.code, {dipstick})
    and ("Coded"(O.value as FHIR.CodeableConcept, {positive})
         or Lower((O.value as FHIR.string).value) in {positive_words}))

define "Red Cells":
  "Results" O where "Coded"(O.code, {rbc}) return (O.value as FHIR.Quantity).value.value

define "Any Blood": "Dipstick Blood" or exists ("Red Cells" V where V >= 3)

define "Heavy Red Cells": exists ("Red Cells" V where V > 25)

define "Problems":
  [Condition] C where not exists (("Keys"(C.verificationStatus)) K
    where K in {{ 'http://terminology.hl7.org/CodeSystem/condition-ver-status|refuted',
                 'http://terminology.hl7.org/CodeSystem/condition-ver-status|entered-in-error' }})

define function "Onset"(C FHIR.Condition):
  Coalesce((C.onset as FHIR.dateTime).value, (C.onset as FHIR.Period).start.value, C.recordedDate.value)

define "Visible Blood":
  exists ("Problems" C where "Coded"(C.code, {gross}) and "Onset"(C) in "On Treatment")

define "Bladder Pain":
  exists ("Problems" C where "Coded"(C.code, {pain}) and "Onset"(C) in "On Treatment")

define "Creatinine":
  [Observation] O where O.status.value in {{ 'final', 'amended', 'corrected', 'preliminary' }}
    and "Coded"(O.code, {creatinine})
    return Tuple {{ at: "When"(O.effective), umol: "Umol"(O.value as FHIR.Quantity) }}

define function "Umol"(Q FHIR.Quantity):
  if Q.unit.value in {{ 'mg/dL', 'mg/dl' }} then Q.value.value * 88.42 else Q.value.value

define "Creatinine Before":
  Last("Creatinine" V where V.at in Interval["Course Start" - 365 days, "Course Start"] sort by at)

define "Renal Decline":
  exists ("Creatinine" V where V.at in "On Treatment" and V.umol > 100)
    and not Coalesce("Creatinine Before".umol > 100, false)

define "Indicator":
  if "Exposed" and ("Visible Blood" or "Heavy Red Cells"
                    or ("Any Blood" and ("Bladder Pain" or "Renal Decline"))) then 'critical'
  else if "Exposed" and "Any Blood" then 'warning'
  else null
"""


def _list(keys: Iterable[str]) -> str:
    return "{ " + ", ".join(f"'{key}'" for key in sorted(set(keys))) + " }"


def _keys(valueset: ValueSet, keep: Mapping[str, object] | None = None) -> list[str]:
    return [f"{c.system}|{c.code}" for c in valueset.concepts.values()
            if keep is None or all(getattr(c, k) in v for k, v in keep.items())]  # type: ignore[operator]


def kb02_cql(valuesets: Mapping[str, ValueSet]) -> str:
    """The CQL library, with each code list taken from the rule set's value sets."""
    results = valuesets["urine-dipstick-results"]
    positive = [f"{c.system}|{c.code}" for c in results.concepts.values()
                if c.ordinal is not None and c.ordinal >= 0.5]
    return _TEMPLATE.format(
        exposure=_list(_keys(valuesets["ketamine"]) + _keys(valuesets["esketamine"])),
        dipstick=_list(_keys(valuesets["urine-blood-dipstick"])),
        positive=_list(positive),
        positive_words=_list(word for word, grade in _ORDINAL_WORDS.items() if grade >= 0.5),
        rbc=_list(_keys(valuesets["urine-rbc-microscopy"])),
        gross=_list(_keys(valuesets["gross-hematuria"])),
        pain=_list(_keys(valuesets["luts"], {"kind": ("dysuria", "suprapubic_pain")})),
        creatinine=_list(_keys(valuesets["creatinine"])),
    )
