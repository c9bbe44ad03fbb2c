"""Back-test from a FHIR server instead of an export: one patient at a time, through the service's own client.

For a handful of patients (a committee's case list) or a server without Bulk Data. Each patient's history
is fetched with the service's FHIR path — ``gather`` with the same time budget, page and resource limits,
outbound-URL checks and bearer token, then the referenced Medications — and replayed exactly like a patient
of an export. Data that could not be fetched is never silence: its types are marked unavailable for the
decision (rules reading them are undecided, as in the live service) and the failure is listed as a problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask.bag as db

from cds_service.decision.catalog import COUNT, prefetch_key
from cds_service.fhir.client import FetchLimits
from cds_service.fhir.prefetch import gather
from cds_service.fhir.references import MEDICATION_KEY, resolve_medications
from cds_service.simulate.ndjson import LineProblem
from cds_service.simulate.pipeline import RunResult, compute, types_read
from cds_service.simulate.replay import PatientReplay, Plan, replay_patient
from cds_service.simulate.rulesource import RuleSource, ruleset_of
from cds_service.simulate.timeline import ExposureCheck

#: The service's client limits with a per-patient budget for a whole history (a hook call gets 2 s).
BACKTEST_LIMITS = FetchLimits(time_budget_s=30.0, request_timeout_s=15.0, max_pages=50)


@dataclass(frozen=True, slots=True)
class FhirSource:
    """Where to read: the FHIR base URL, a bearer token (never logged) and the client's limits."""

    base_url: str
    token: str | None
    limits: FetchLimits = BACKTEST_LIMITS
    allow_unauthenticated: bool = False


def templates(types: set[str]) -> dict[str, str]:
    """The patient read and one unfiltered search per type (a back-test needs the whole history)."""
    queries = {"patient": "Patient/{{context.patientId}}"}
    for rtype in sorted(types - {"Patient"}):
        queries[prefetch_key(rtype)] = f"{rtype}?patient={{{{context.patientId}}}}&_count={COUNT}"
    return queries


def fetch_patient(source: FhirSource, patient: str, types: set[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The patient's resources and the data keys that could not be (fully) obtained, key → why."""
    gathered = gather(templates(types), None, {"patientId": patient, "userId": "Practitioner/backtest"},
                      fhir_server=source.base_url, access_token=source.token, limits=source.limits,
                      allow_unauthenticated_fhir=source.allow_unauthenticated)
    medications = resolve_medications(gathered.resources, fhir_server=source.base_url, access_token=source.token,
                                      limits=source.limits, allow_unauthenticated_fhir=source.allow_unauthenticated)
    missing = dict(gathered.missing)
    if medications.missing:
        missing[MEDICATION_KEY] = medications.missing
    return gathered.resources + medications.resources, missing


def replay_from_fhir(patient: str, source: FhirSource, sources: Sequence[RuleSource], types: set[str],
                     plan: Plan) -> tuple[PatientReplay | None, list[LineProblem], bool]:
    """(replay or None if never exposed, problems, exposed?) for one patient id."""
    resources, missing = fetch_patient(source, patient, types)
    problems = [LineProblem(f"{source.base_url} Patient/{patient}", 0, f"{key}: {why} (rules reading it are "
                                                                       "undecided)")
                for key, why in sorted(missing.items())]
    if "patient" not in missing and not any(r.get("resourceType") == "Patient" for r in resources):
        problems.append(LineProblem(f"{source.base_url} Patient/{patient}", 0,
                                    "no such Patient on the server (not found); nothing replayed"))
    rulesets = {rs.label: ruleset_of(rs) for rs in sources}
    medications = {f"Medication/{r.get('id')}": r for r in resources if r.get("resourceType") == "Medication"}
    exposed = ExposureCheck(next(iter(rulesets.values())), medications)
    if not any(exposed(r) for r in resources):
        return None, problems, False
    records = [r for r in resources if r.get("resourceType") != "Medication"]
    replay = replay_patient(patient, records, rulesets, medications, plan, missing=missing)
    return replay, problems, True


def run_fhir(source: FhirSource, patients: Sequence[str], sources: Sequence[RuleSource], rulesets: Sequence[Any],
             plan: Plan, *, client: Any = None, progress: bool = False) -> RunResult:
    """Replay each listed patient from the FHIR server, one Dask task per few patients."""
    types = types_read(rulesets)
    unique = sorted(dict.fromkeys(patients))
    bag = db.from_sequence(unique, partition_size=4).map(replay_from_fhir, source=source, sources=tuple(sources),
                                                        types=types, plan=plan)
    outcomes = compute(bag, client, progress, f"{len(unique)} patient(s) from {source.base_url}")
    result = RunResult(patients_in_export=len(unique), files_read=[source.base_url])
    for replay, problems, exposed in outcomes:
        result.problems.extend(problems)
        result.exposed += int(exposed)
        if replay is not None:
            result.replays.append(replay)
    result.replays.sort(key=lambda r: r.patient)
    return result
