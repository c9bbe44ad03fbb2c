"""Write the synthetic cohort as a FHIR Bulk Data export: one NDJSON file (or several) per resource type.

This is the shape a health system hands out for a back-test (``kbladder simulate``): ``Patient.ndjson``,
``Observation.ndjson``, … plus the ``$export`` completion manifest (``manifest.json``: transactionTime,
output files with their type and count). ``expected.json`` keeps the cohort's clinical expectations:
per patient, the rules that should fire on patient-view at the patient's ``now`` and on order-sign of each
ketamine/esketamine order signed at ``now`` (the synthetic draft orders, written here as signed orders).

``patients=N`` stacks deterministic copies of the cohort (copy 0 is the plain cohort), each with its own
ids, random draws and a ``now`` moved back by up to two years, so a large export spreads its orders over
time as a real one does. Same seed and arguments, same bytes (gzip without a timestamp).
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from cds_service.synth.background import load_backgrounds
from cds_service.synth.builder import iso
from cds_service.synth.cohort import Cohort, SyntheticPatient, _utc, generate_cohort

MANIFEST = "manifest.json"
EXPECTED = "expected.json"
SPREAD_DAYS = 730  # copies' reference times spread over the two years before now


def copy_now(now: datetime, copy: int) -> datetime:
    """The reference time of copy ``copy``: copy 0 at ``now``, the others spread (deterministically) before it."""
    return now if copy == 0 else now - timedelta(days=(copy * 7919) % SPREAD_DAYS)


def signed_orders(patient: SyntheticPatient) -> list[dict[str, Any]]:
    """The draft orders as the orders they became once signed (status active, ``-order-`` ids)."""
    orders = []
    for draft in patient.draft_orders:
        order = json.loads(json.dumps(draft))
        order["id"] = str(order["id"]).replace("-draft-", "-order-")
        order["status"] = "active"
        orders.append(order)
    return orders


def cohorts(seed: int, now: datetime, patients: int | None, backgrounds: Path | None) -> Iterator[Cohort]:
    """Copy after copy of the cohort until ``patients`` patients (default: one copy, every scenario)."""
    loaded = load_backgrounds(backgrounds) if backgrounds else []
    remaining = patients
    copy = 0
    while remaining is None or remaining > 0:
        cohort = generate_cohort(seed, copy_now(now, copy), copy=copy, loaded_backgrounds=loaded)
        if remaining is not None:
            cohort.patients = cohort.patients[:remaining]
            remaining -= len(cohort.patients)
        yield cohort
        if remaining is None:
            return
        copy += 1


class _Writers:
    """One open NDJSON writer per (resource type, shard); a patient's resources of a type share a shard."""

    def __init__(self, out: Path, compress: bool, files_per_type: int) -> None:
        self.out, self.compress, self.files_per_type = out, compress, max(1, files_per_type)
        self.files: dict[tuple[str, int], IO[bytes]] = {}
        self.counts: dict[tuple[str, int], int] = {}

    def name(self, rtype: str, shard: int) -> str:
        stem = rtype if self.files_per_type == 1 else f"{rtype}.{shard + 1:03d}"
        return f"{stem}.ndjson" + (".gz" if self.compress else "")

    def write(self, resource: dict[str, Any], shard: int) -> None:
        key = (str(resource["resourceType"]), shard % self.files_per_type)
        handle = self.files.get(key)
        if handle is None:
            path = self.out / self.name(*key)
            raw = path.open("wb")
            handle = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if self.compress else raw
            self.files[key] = handle
            self.counts[key] = 0
        handle.write(json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")
        self.counts[key] += 1

    def close(self) -> list[dict[str, Any]]:
        output = []
        for key in sorted(self.files):
            handle = self.files[key]
            fileobj = handle.fileobj if isinstance(handle, gzip.GzipFile) else None
            handle.close()
            if isinstance(fileobj, io.IOBase):
                fileobj.close()
            output.append({"type": key[0], "url": self.name(*key), "count": self.counts[key]})
        return output


def write_export(
    seed: int,
    out: Path | str,
    now: datetime | str | None = None,
    *,
    patients: int | None = None,
    backgrounds: Path | str | None = None,
    compress: bool = False,
    files_per_type: int = 1,
) -> dict[str, Any]:
    """Write the export to ``out``; returns the ``$export`` manifest (``expected.json`` is written beside it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.ndjson"), *out.glob("*.ndjson.gz")]:
        old.unlink()  # a rerun must not leave a bigger earlier export's files behind
    reference = _utc(now)
    writers = _Writers(out, compress, files_per_type)
    expected: list[dict[str, Any]] = []
    shard = 0
    try:
        for cohort in cohorts(seed, reference, patients, Path(backgrounds) if backgrounds else None):
            for patient in cohort.patients:
                orders = signed_orders(patient)
                for entry in patient.bundle["entry"]:
                    writers.write(entry["resource"], shard)
                for order in orders:
                    writers.write(order, shard)
                expected.append({
                    "id": patient.id,
                    "scenario": patient.scenario,
                    "now": iso(cohort.now),
                    "patient-view": patient.expected["patient-view"],
                    "orders": {order["id"]: patient.expected["order-sign"] for order in orders},
                })
                shard += 1
    finally:
        output = writers.close()
    manifest = {
        "transactionTime": iso(reference),
        "request": "kbladder synth --format ndjson",
        "requiresAccessToken": False,
        "output": output,
        "error": [],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (out / EXPECTED).write_text(json.dumps({
        "generator": "cds_service.synth", "seed": seed, "now": iso(reference),
        "conventions": "patient-view: rules expected at the patient's now; orders: rules expected on order-sign "
                       "of that order, as of its authoredOn (the patient's now)",
        "patients": expected,
    }, indent=1) + "\n", encoding="utf-8")
    return manifest
