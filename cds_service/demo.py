"""``kbladder demo``: replay a synthetic cohort through the real HTTP service, as an EHR would.

The demo plays the EHR: it serves the app on a loopback port, reads discovery, fills each
prefetch template from the patient's own resources (a small in-memory search: resource type,
patient, ``code`` filter), and calls ``patient-view``, ``order-select`` and ``order-sign``. The
service runs with a clock fixed at the cohort's ``now``, so the cards match the manifest's
expectations whenever the demo is run.
"""

from __future__ import annotations

import logging
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from cds_service import loopback
from cds_service.cdshooks.hooks import HOOKS

INDICATOR_MARK = {"critical": "!!", "warning": "!", "info": "i"}


@dataclass(slots=True)
class DemoPatient:
    """What the demo needs of a synthetic patient (whatever produced it)."""

    id: str
    scenario: str
    resources: list[dict[str, Any]]
    drafts: list[dict[str, Any]]
    expected: Mapping[str, Sequence[str]]
    #: context.appointments for appointment-book (proposed Appointments and the orders they book).
    appointments: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class HookResult:
    cards: list[tuple[str, str]]  # (rule id, indicator)
    undecided: list[str]
    ms: float
    skipped: bool = False

    @property
    def rules(self) -> set[str]:
        return {rule for rule, _ in self.cards}


@dataclass(slots=True)
class DemoRow:
    patient: DemoPatient
    hooks: dict[str, HookResult] = field(default_factory=dict)

    def mismatches(self) -> list[str]:
        """Differences between the manifest's expectations and the cards received."""
        problems = []
        for hook, result in self.hooks.items():
            if result.skipped:
                continue
            expected = set(self.patient.expected.get(hook, ()))
            if missing := sorted(expected - result.rules):
                problems.append(f"{hook}: expected {', '.join(missing)}")
            if extra := sorted(result.rules - expected):
                problems.append(f"{hook}: unexpected {', '.join(extra)}")
        return problems


def rules_of(card: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(rule id, indicator) of every rule a card speaks for: merged on its topic or folded into it.

    The incomplete-checks card speaks for no rule (its undecided rules are in the response extension).
    """
    extension = card.get("extension") or {}
    rules = extension.get("org.kbladder-cds.rules") or (
        [extension["org.kbladder-cds.rule"]] if "org.kbladder-cds.rule" in extension else [])
    return [(str(r["id"]), str(r["indicator"])) for r in rules]


def from_cohort(cohort: Any) -> tuple[datetime, list[DemoPatient]]:
    """Demo patients from a generated ``cds_service.synth`` cohort."""
    from cds_service.fhir.parse import bundle_resources

    patients = [DemoPatient(p.id, p.scenario, bundle_resources(p.bundle), list(p.draft_orders), p.expected,
                            list(p.appointments)) for p in cohort.patients]
    return cohort.now, patients


def from_directory(folder: Path) -> tuple[datetime, list[DemoPatient]]:
    """Demo patients from a folder written by ``kbladder synth`` (manifest.json + bundles)."""
    import json

    from cds_service.clinical.timeutil import parse_instant
    from cds_service.fhir.parse import bundle_resources

    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    patients = []
    for entry in manifest["patients"]:
        bundle = json.loads((folder / entry["files"]["bundle"]).read_text(encoding="utf-8"))
        drafts_file = entry["files"].get("drafts")
        drafts = bundle_resources(json.loads((folder / drafts_file).read_text(encoding="utf-8"))) if drafts_file else []
        booked_file = entry["files"].get("appointments")
        booked = bundle_resources(json.loads((folder / booked_file).read_text(encoding="utf-8"))) if booked_file else []
        resources = bundle_resources(bundle)
        patients.append(DemoPatient(entry["id"], entry["scenario"], resources, drafts, entry["expected"], booked))
    return parse_instant(manifest["now"]), patients


# ---------------------------------------------------------------- the EHR side


def _codes(resource: Mapping[str, Any]) -> set[tuple[str, str]]:
    concept = resource.get("code") or resource.get("medicationCodeableConcept") or {}
    return {(c.get("system", ""), c.get("code", "")) for c in concept.get("coding") or [] if isinstance(c, Mapping)}


def _belongs(resource: Mapping[str, Any], patient_id: str) -> bool:
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, Mapping) and ref.get("reference") in (f"Patient/{patient_id}", patient_id):
            return True
    return False


def local_search(query: str, patient_id: str, resources: Sequence[Mapping[str, Any]]) -> Any:
    """Answer one rendered prefetch query from the patient's resources, as the EHR's FHIR server would."""
    parts = urlsplit(query)
    path = parts.path.strip("/")
    if "/" in path:  # a read: Type/id
        rtype, rid = path.split("/", 1)
        return next((dict(r) for r in resources if r.get("resourceType") == rtype and r.get("id") == rid), None)
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    wanted = {tuple(code.split("|", 1)) for code in params["code"].split(",")} if "code" in params else None
    matches = [
        dict(r) for r in resources
        if r.get("resourceType") == path and _belongs(r, patient_id) and (wanted is None or _codes(r) & wanted)
    ]
    # Like many EHRs, return the Medications that matches reference alongside them (search.mode include).
    referenced = {m["medicationReference"]["reference"] for m in matches
                  if isinstance(m.get("medicationReference"), Mapping) and "reference" in m["medicationReference"]}
    included = [dict(r) for r in resources
                if r.get("resourceType") == "Medication" and f"Medication/{r.get('id')}" in referenced]
    return {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in matches]
            + [{"resource": r, "search": {"mode": "include"}} for r in included]}


def prefetch_for(templates: Mapping[str, str], patient_id: str, resources: Sequence[Mapping[str, Any]]) -> dict:
    """Every prefetch key filled, as a conformant EHR would send it."""
    return {
        key: local_search(template.replace("{{context.patientId}}", patient_id), patient_id, resources)
        for key, template in templates.items()
    }


def hook_request(hook: str, patient: DemoPatient, templates: Mapping[str, str]) -> dict[str, Any] | None:
    """The CDS Hooks request for one hook; None when the hook has nothing to act on (no draft order, no
    appointment being booked)."""
    definition = HOOKS[hook]
    context: dict[str, Any] = {"userId": "Practitioner/demo", "patientId": patient.id}
    if definition.field("encounterId") is not None and definition.field("encounterId").required:
        context["encounterId"] = "demo-visit"  # a visit id the demo EHR makes up (no Encounter is read)
    bundle_field = definition.bundle_field
    if bundle_field is not None:
        carried = patient.drafts if bundle_field == "draftOrders" else patient.appointments
        if not carried:
            return None
        context[bundle_field] = {"resourceType": "Bundle", "type": "collection",
                                 "entry": [{"resource": d} for d in carried]}
    if definition.field("selections") is not None:  # the clinician selects the first draft
        context["selections"] = [f"MedicationRequest/{patient.drafts[0]['id']}"]
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context,
            "prefetch": prefetch_for(templates, patient.id, patient.resources)}


# ---------------------------------------------------------------- the service side


@contextmanager
def serving(rules_dir: Path, now: datetime, database_dir: Path) -> Iterator[str]:
    """The real app on a free loopback port, its clock fixed at ``now``."""
    from cds_service.app import create_app
    from cds_service.config import Settings
    from cds_service.rules_state import RulesState
    from cds_service.store import Store

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the table is the demo's output, not access lines
    database_url = f"sqlite:///{database_dir / 'demo.sqlite3'}"
    # Each hook is judged on its own against the manifest: no order-select -> order-sign de-duplication.
    settings = Settings(database_url=database_url, rules_dir=str(rules_dir), reload_interval_s=0,
                        order_dedupe_window_s=0)
    store = Store(database_url)
    rules = RulesState([rules_dir], reload_interval_s=0)
    app = create_app(settings, rules_state=rules, store=store, clock=lambda: now)
    try:
        with loopback.serve(app) as base_url:
            yield base_url
    finally:
        store.dispose()


def replay(
    patients: Sequence[DemoPatient],
    base_url: str,
    *,
    on_progress: Callable[[int], None] = lambda _: None,
) -> list[DemoRow]:
    """Call every hook for every patient over HTTP; the rows say which cards came back."""
    session = requests.Session()
    discovery = session.get(f"{base_url}/cds-services", timeout=30).json()
    templates = {service["hook"]: service.get("prefetch", {}) for service in discovery["services"]}
    rows = []
    for patient in patients:
        row = DemoRow(patient)
        for hook in HOOKS:
            body = hook_request(hook, patient, templates[hook])
            if body is None:
                row.hooks[hook] = HookResult([], [], 0.0, skipped=True)
                continue
            started = time.perf_counter()
            response = session.post(f"{base_url}/cds-services/{HOOKS[hook].service.id}", json=body, timeout=60)
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            answer = response.json()
            cards = [rule for card in answer["cards"] for rule in rules_of(card)]
            undecided = [u["rule"] for u in answer.get("extension", {}).get("org.kbladder-cds.undecided", [])]
            row.hooks[hook] = HookResult(cards, undecided, elapsed)
        rows.append(row)
        on_progress(1)
    return rows


# ---------------------------------------------------------------- the report


def _cell(result: HookResult) -> str:
    if result.skipped:
        return "—"
    shown = [f"{rule}{INDICATOR_MARK.get(ind, '')}" for rule, ind in sorted(result.cards)]
    shown += [f"{rule}?" for rule in sorted(result.undecided)]
    return " ".join(shown) or "·"


def table(rows: Sequence[DemoRow]) -> str:
    """A fixed-width table: one row per patient, one column per hook, and whether it matched."""
    header = ("patient", "scenario", *HOOKS, "manifest")
    body = [
        (row.patient.id, row.patient.scenario, *(_cell(row.hooks[h]) for h in HOOKS),
         "ok" if not row.mismatches() else "; ".join(row.mismatches()))
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    def fmt(line: Sequence[str]) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
    rule = "  ".join("-" * w for w in widths)
    legend = ("cards: KB-nn!! critical, KB-nn! warning, KB-nni info, KB-nn? undecided (missing data); "
              "· none; — no draft order")
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body), "", legend])


def summary(rows: Sequence[DemoRow]) -> str:
    """Totals: calls, cards by indicator, latency, and how many patients matched the manifest."""
    results = [r for row in rows for r in row.hooks.values() if not r.skipped]
    latencies = sorted(r.ms for r in results)
    by_indicator: dict[str, int] = {}
    for result in results:
        for _, indicator in result.cards:
            by_indicator[indicator] = by_indicator.get(indicator, 0) + 1
    matched = sum(1 for row in rows if not row.mismatches())
    p95 = latencies[max(0, round(0.95 * len(latencies)) - 1)] if latencies else 0.0
    cards = ", ".join(f"{n} {k}" for k, n in sorted(by_indicator.items())) or "none"
    return (f"{len(rows)} patients, {len(results)} hook calls over HTTP; cards: {cards}; "
            f"latency p50 {statistics.median(latencies) if latencies else 0:.1f} ms, p95 {p95:.1f} ms; "
            f"manifest matched for {matched}/{len(rows)} patients")
