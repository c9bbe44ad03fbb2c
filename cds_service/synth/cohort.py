"""Generate, and write to disk, the deterministic synthetic cohort."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cds_service.cdshooks.hooks import HOOKS
from cds_service.synth import shapes  # noqa: F401  (registers the issue-16 record-shape scenarios last)
from cds_service.synth.background import Background, load_backgrounds, overlay
from cds_service.synth.builder import PatientBuilder, iso
from cds_service.synth.codes import ALL_RULES, PATIENT_VIEW_RULES
from cds_service.synth.scenarios import SCENARIOS, Outcome

log = logging.getLogger(__name__)

DEFAULT_NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
MANIFEST = "manifest.json"
CONVENTIONS = (
    "expected lists the rules that should fire at `now` per clinical.md §2 (clinical intent, not engine output). "
    "Order hooks are replayed with the patient's draft orders (empty when there are none). KB-06/KB-13 info "
    "cards are listed only when no warning/critical urinary card fires."
)


@dataclass(slots=True)
class SyntheticPatient:
    id: str
    scenario: str
    description: str
    bundle: dict[str, Any]
    draft_orders: list[dict[str, Any]]
    expected: dict[str, list[str]]
    background: str | None = None  # anonymous label of the overlaid background record, if any
    #: context.appointments of appointment-book: proposed Appointments and the orders they book.
    appointments: list[dict[str, Any]] = field(default_factory=list)

    def context_resources(self, hook: str) -> list[dict[str, Any]]:
        """What *hook*'s context Bundle carries for this patient: draft orders, appointments, or nothing."""
        return context_resources(hook, self.draft_orders, self.appointments)


def context_resources(hook: str, drafts: list[dict[str, Any]], appointments: list[dict[str, Any]]
                      ) -> list[dict[str, Any]]:
    """The resources of *hook*'s context Bundle (``draftOrders`` or ``appointments``; none for the others)."""
    field_name = HOOKS[hook].bundle_field
    return list(drafts) if field_name == "draftOrders" else list(appointments) if field_name else []


def expected_cards(hook: str, outcome: Outcome) -> list[str]:
    """The scenario's expectation for *hook*: order hooks, appointment-book, or the record review."""
    definition = HOOKS[hook]
    if definition.drafts == "appointments":
        return sorted(outcome.booking)
    return sorted(outcome.orders if definition.order_hook else outcome.patient_view)


@dataclass(slots=True)
class Cohort:
    seed: int
    now: datetime
    patients: list[SyntheticPatient] = field(default_factory=list)


def _utc(now: datetime | str | None) -> datetime:
    if now is None:
        return DEFAULT_NOW
    if isinstance(now, str):
        now = datetime.fromisoformat(now.replace("Z", "+00:00"))
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def patient_id(index: int, scenario: str, copy: int = 0) -> str:
    """``kb07-name``; copies (``--patients N``) get ``c00042-kb07-name`` so ids stay unique across copies."""
    base = f"kb{index:02d}-{scenario}"
    return base if copy == 0 else f"c{copy:05d}-{base}"


def generate_cohort(
    seed: int, now: datetime | str | None = None, *, backgrounds: Path | str | None = None, copy: int = 0,
    loaded_backgrounds: list[Background] | None = None,
) -> Cohort:
    """Build every scenario's patient for ``seed`` at ``now`` (default 2026-06-01T09:00:00Z).

    Pure and deterministic: each scenario draws from its own ``random.Random`` seeded with
    ``seed`` and the scenario name, so adding a scenario never changes another one. With
    ``backgrounds`` (a folder of Synthea bundles) each patient gets a background record of
    the same gender overlaid (round-robin; none when no background matches); the overlay
    leaves out everything the rules read, so expectations are unchanged.

    ``copy`` > 0 makes another, equally deterministic cohort with its own ids and random draws
    (``--patients N`` stacks copies 0, 1, 2, …); ``loaded_backgrounds`` saves re-reading the folder per copy.
    """
    now = _utc(now)
    loaded: list[Background] = (loaded_backgrounds if loaded_backgrounds is not None
                                else load_backgrounds(Path(backgrounds)) if backgrounds else [])
    cohort = Cohort(seed=seed, now=now)
    used: dict[str, int] = {}
    for index, (name, build) in enumerate(SCENARIOS, start=1):
        pid = patient_id(index, name, copy)
        stream = f"kbladder-synth/{seed}/{name}" if copy == 0 else f"kbladder-synth/{seed}/{copy}/{name}"
        builder = PatientBuilder(pid, now, random.Random(stream))
        outcome = build(builder)
        if builder.drafts == [] and outcome.orders:
            raise ValueError(f"{name}: order-hook expectations without a draft order")
        if builder.appointments == [] and outcome.booking:
            raise ValueError(f"{name}: appointment-book expectations without a booked appointment")
        unknown = set(outcome.patient_view) | set(outcome.orders)
        if not unknown <= ALL_RULES or not set(outcome.patient_view) <= PATIENT_VIEW_RULES:
            raise ValueError(f"{name}: unknown rule or a rule that does not run on patient-view")
        label = None
        matching = [bg for bg in loaded if bg.gender == builder.gender]
        if matching:
            bg = matching[used.get(builder.gender, 0) % len(matching)]
            used[builder.gender] = used.get(builder.gender, 0) + 1
            birth = _utc(builder.resources[0]["birthDate"] + "T00:00:00+00:00")
            extra = overlay(bg, pid, now, birth)
            builder.resources[1:1] = extra
            label = bg.label
            log.info("patient %s: %d background resources from %s", pid, len(extra), label)
        cohort.patients.append(
            SyntheticPatient(
                id=pid,
                scenario=name,
                description=outcome.description,
                bundle=builder.bundle(),
                draft_orders=builder.drafts,
                expected={hook: expected_cards(hook, outcome) for hook in HOOKS},
                background=label,
                appointments=builder.appointments,
            )
        )
    return cohort


def _dump(data: Any) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def drafts_bundle(patient: SyntheticPatient) -> dict[str, Any]:
    """Draft orders as a collection Bundle, the shape of CDS Hooks ``context.draftOrders``."""
    return _collection(f"{patient.id}-drafts", patient.draft_orders)


def appointments_bundle(patient: SyntheticPatient) -> dict[str, Any]:
    """Proposed Appointments (and the orders they book) as a collection Bundle: ``context.appointments``."""
    return _collection(f"{patient.id}-appointments", patient.appointments)


def _collection(bundle_id: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "id": bundle_id, "type": "collection",
            "entry": [{"resource": resource} for resource in resources]}


def manifest(cohort: Cohort) -> dict[str, Any]:
    return {
        "generator": "cds_service.synth",
        "seed": cohort.seed,
        "now": iso(cohort.now),
        "hooks": list(HOOKS),
        "conventions": CONVENTIONS,
        "patients": [
            {
                "id": p.id,
                "scenario": p.scenario,
                "description": p.description,
                "files": {"bundle": f"{p.id}.json", "drafts": f"{p.id}.drafts.json" if p.draft_orders else None,
                          "appointments": f"{p.id}.appointments.json" if p.appointments else None},
                "background": p.background,
                "expected": p.expected,
            }
            for p in cohort.patients
        ],
    }


def write_cohort(cohort: Cohort, out_dir: Path) -> dict[str, Any]:
    """Write ``<id>.json`` (transaction Bundle), ``<id>.drafts.json``, ``<id>.appointments.json`` and
    ``manifest.json``; returns the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for patient in cohort.patients:
        (out_dir / f"{patient.id}.json").write_bytes(_dump(patient.bundle))
        if patient.draft_orders:
            (out_dir / f"{patient.id}.drafts.json").write_bytes(_dump(drafts_bundle(patient)))
        if patient.appointments:
            (out_dir / f"{patient.id}.appointments.json").write_bytes(_dump(appointments_bundle(patient)))
    data = manifest(cohort)
    (out_dir / MANIFEST).write_bytes(_dump(data))
    return data


def main_synth(
    seed: int, out: Path | str, now: datetime | str | None = None, backgrounds: Path | str | None = None
) -> dict[str, Any]:
    """Entry point for ``kbladder synth``: generate the cohort and write it to ``out``; returns the manifest."""
    cohort = generate_cohort(seed, _utc(now), backgrounds=Path(backgrounds) if backgrounds else None)
    data = write_cohort(cohort, Path(out))
    log.info("synthetic cohort: %d patients (seed %d) written to %s", len(cohort.patients), seed, out)
    return data
