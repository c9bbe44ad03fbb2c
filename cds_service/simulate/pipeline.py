"""The back-test on Dask: two passes over the export, patients grouped without a full shuffle.

Pass 1 reads only the medication files (MedicationAdministration/Request/Statement) and keeps the ids of
patients with ketamine or esketamine exposure — usually a small share of a health system. Pass 2 reads the
files of every type the rules read, keeps only those patients' resources and routes each to one of B
buckets by patient id (the sorted ids cut into runs) — partitioned by patient, no full shuffle: each input
partition writes each bucket its share as a file (a map-reduce shuffle on disk), so no task ever holds more
than one input partition or one bucket. One task per bucket reads its files, replays its patients and
writes their result rows to a file of its own, returning only counts and bad lines: neither the parsed
records nor the replays become task results that a scheduler or the driver keeps, and the summary reads
the replay files back one bucket at a time. Memory is bounded by the partition and the bucket, not by the
export (docs/performance.md).

The same graph runs on the synchronous scheduler (``client=None``), a local cluster or a remote one
(``Client("tcp://…")``): nothing here knows which.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import orjson
from dask.delayed import Delayed, delayed

from cds_service.decision.catalog import build_templates, resource_type_of
from cds_service.engine.model import MEDICATION_RESOURCES
from cds_service.fhir.parse import check_resource
from cds_service.simulate.ndjson import (
    BLOCK_BYTES,
    ExportError,
    LineProblem,
    Part,
    export_files,
    partitions,
    patient_of,
    read_part,
)
from cds_service.simulate.replay import PatientReplay, Plan, replay_patient
from cds_service.simulate.rulesource import RuleSource, ruleset_of
from cds_service.simulate.timeline import ExposureCheck

PATIENTS_PER_BUCKET = 50  # bounds a bucket's memory: ~50 patients' records at once per task
HOOKS = ("patient-view", "order-select", "order-sign")


class ReplayFiles:
    """The replays a run wrote, one file per bucket, read back in bucket order each time they are iterated
    (patients sorted within a bucket: the same order on every scheduler). The folder is removed when the
    object is (or at ``cleanup()``)."""

    def __init__(self, buckets: int) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="kbladder-replays-")
        self.folder = Path(self._folder.name)
        self.buckets = buckets
        self.count = 0  # patients, as the bucket tasks report them

    def path(self, bucket: int) -> Path:
        return self.folder / f"b{bucket:05d}.jsonl"

    def __iter__(self) -> Iterator[PatientReplay]:
        for bucket in range(self.buckets):
            path = self.path(bucket)
            if not path.exists():  # a bucket whose patients were all filtered out
                continue
            with path.open("rb") as handle:
                for line in handle:
                    yield PatientReplay(**orjson.loads(line))

    def __len__(self) -> int:
        return self.count

    def cleanup(self) -> None:
        self._folder.cleanup()


@dataclass(slots=True)
class RunResult:
    """Everything the summary needs: per-patient replays (in memory, or in files a bucket at a time),
    bad lines, and what was read."""

    replays: list[PatientReplay] | ReplayFiles = field(default_factory=list)
    problems: list[LineProblem] = field(default_factory=list)
    patients_in_export: int = 0
    exposed: int = 0
    lines_read: int = 0
    files_read: list[str] = field(default_factory=list)
    files_not_read: list[str] = field(default_factory=list)
    buckets: int = 0


def types_read(rulesets: Sequence[Any]) -> set[str]:
    """Resource types any rule set reads on any hook (the service's own prefetch templates say which)."""
    wanted = {"Patient", *MEDICATION_RESOURCES}
    for ruleset in rulesets:
        for hook in HOOKS:
            wanted.update(resource_type_of(key) for key in build_templates(ruleset, hook))
    return wanted


def bucket_map(exposed: set[str], patients_per_bucket: int) -> dict[str, int]:
    """Each exposed patient's bucket: the sorted ids cut into runs of ``patients_per_bucket``, so buckets
    read in order give every patient in sorted order — the same output order whatever the bucket size or
    the scheduler, with no sort over the whole run."""
    per = max(1, patients_per_bucket)
    return {patient: index // per for index, patient in enumerate(sorted(exposed))}


# ---------------------------------------------------------------- tasks (run on workers)

Located = list[tuple[str, dict[str, Any]]]  # (file:line, resource) of one patient


def read_medications(parts: Sequence[Part]) -> tuple[dict[str, dict[str, Any]], list[LineProblem], int]:
    """Medication resources (no patient of their own), by ``Medication/id``."""
    found: dict[str, dict[str, Any]] = {}
    problems: list[LineProblem] = []
    lines = 0
    for part in parts:
        for _, item in read_part(part):
            lines += 1
            if isinstance(item, LineProblem):
                problems.append(item)
            elif isinstance(item.get("id"), str):
                found[f"Medication/{item['id']}"] = item
    return found, problems, lines


def scan_exposure(part: Part, source: RuleSource, medications: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Pass 1 over one medication partition: ids of patients with ketamine/esketamine events."""
    exposed_check = ExposureCheck(ruleset_of(source), medications)
    exposed: set[str] = set()
    problems: list[LineProblem] = []
    lines = 0
    for _, item in read_part(part):
        lines += 1
        if isinstance(item, LineProblem):
            problems.append(item)
            continue
        patient = patient_of(item)
        if patient is not None and exposed_check(item):
            exposed.add(patient)  # a line without a patient is reported by pass 2, which reads every line
    return {"exposed": exposed, "problems": problems, "lines": lines}


def route(part: Part, exposed: Mapping[str, int], scratch: str) -> dict[str, Any]:
    """Pass 2 over one partition: the exposed patients' resources, written to their patients' bucket folders.

    ``scratch/b00042/<partition>.jsonl`` holds this partition's lines for bucket 42, each
    ``[file:line, patient, resource]``: like a map-reduce shuffle on disk, so no task ever holds more than
    one partition, and a bucket task reads only its own folder. Also counts Patient lines (the export's
    patient count) and reports lines without a patient.
    """
    shares: dict[int, list[bytes]] = {}
    problems: list[LineProblem] = []
    lines = patients = 0
    for number, item in read_part(part):
        lines += 1
        if isinstance(item, LineProblem):
            problems.append(item)
            continue
        if part.resource_type == "Patient":
            patients += 1
        patient = patient_of(item)
        if patient is None:
            problems.append(LineProblem(part.name, number, f"{part.resource_type} without a patient "
                                                           "reference (subject/patient); skipped"))
            continue
        bucket = exposed.get(patient)
        if bucket is None:
            continue
        shares.setdefault(bucket, []).append(
            orjson.dumps([f"{part.name}:{number}", patient, item]))
    stem = f"{part.name}.{part.start}.jsonl"
    for bucket, rows in shares.items():
        folder = Path(scratch) / f"b{bucket:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / stem).write_bytes(b"\n".join(rows) + b"\n")
    return {"problems": problems, "lines": lines, "patients": patients}


def all_routed(stats: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The barrier between the passes: done when every partition is routed; its result, their statistics.

    Bucket tasks depend on this one task, not on every route task: B buckets × P partitions dependencies
    made the graph (and the scheduler's memory) grow with the square of the export.
    """
    return list(stats)


def group(bucket: int, scratch: str, routed: Any) -> list[tuple[str, Located]]:
    """One bucket's patient records, from every partition's file for it (``routed``: only orders the task
    after the ``all_routed`` barrier). Sorted by patient and file:line order: the same records on every run."""
    merged: dict[str, Located] = {}
    folder = Path(scratch) / f"b{bucket:05d}"
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else ():
        with path.open("rb") as handle:
            for raw in handle:
                where, patient, resource = orjson.loads(raw)
                merged.setdefault(patient, []).append((where, resource))
    return sorted(merged.items())


def replay_bucket(bucket: int, scratch: str, routed: Any, sources: Sequence[RuleSource],
                  medications: Mapping[str, Mapping[str, Any]], plan: Plan, target: str) -> dict[str, Any]:
    """One bucket, read and replayed in one task; its replays written to ``target`` (one JSON line per
    patient), only the patient count and bad lines returned (``routed``: as in ``group``).

    Why one task writing a file, and not a bag of records mapped onto the replay: a task's result stays in
    the scheduler's (or the driver's) memory, and for a bag partition that was every parsed record of the
    bucket, for the run's results every replay row — the run's memory then grew with the export.
    """
    problems: list[LineProblem] = []
    patients = 0
    with Path(target).open("wb") as handle:
        for record in group(bucket, scratch, routed):
            replay, found = evaluate_record(record, sources, medications, plan)
            handle.write(orjson.dumps(replay) + b"\n")
            problems.extend(found)
            patients += 1
    return {"patients": patients, "problems": problems}


def evaluate_record(record: tuple[str, Located], sources: Sequence[RuleSource],
                    medications: Mapping[str, Mapping[str, Any]],
                    plan: Plan) -> tuple[PatientReplay, list[LineProblem]]:
    """Replay one patient with every rule set; a missing Patient resource is reported where the patient appears."""
    patient, located = record
    resources = [resource for _, resource in located]
    problems = []
    for where, resource in located:  # checked here, where the decision's own check then hits the cache
        invalid = check_resource(resource)
        if invalid is not None:  # still handed on: the decision marks its type incomplete, as the service does
            file, _, line = where.rpartition(":")
            problems.append(LineProblem(file, int(line), f"not valid FHIR R4: {invalid.message}"))
    rulesets = {source.label: ruleset_of(source) for source in sources}
    replay = replay_patient(patient, resources, rulesets, medications, plan)
    if not replay.has_patient:
        where = min(located, key=lambda item: item[0])[0]
        file, _, line = where.rpartition(":")
        problems.append(LineProblem(file, int(line), f"patient {patient} has no Patient resource in the export; "
                                                     "replayed without age and sex"))
    return replay, problems


# ---------------------------------------------------------------- the driver


def compute(obj: Any, client: Any, progress: bool, label: str) -> Any:
    """Run a graph with a library progress bar: distributed's for a cluster, dask's for the local scheduler."""
    if client is not None:
        futures = client.compute(obj)
        if progress:
            from distributed import progress as show

            print(label, file=sys.stderr)
            show(futures)
            print(file=sys.stderr)
        return client.gather(futures)
    from dask.diagnostics import ProgressBar

    with ProgressBar(out=sys.stderr) if progress else nullcontext():
        if progress:
            print(label, file=sys.stderr)
        return dask.compute(obj, scheduler="synchronous")[0]


def run(export: Path, sources: Sequence[RuleSource], rulesets: Sequence[Any], plan: Plan, *, client: Any = None,
        progress: bool = False, block_bytes: int = BLOCK_BYTES,
        patients_per_bucket: int = PATIENTS_PER_BUCKET, scratch: Path | None = None) -> RunResult:
    """Both passes over ``export``; ``client`` None: the synchronous scheduler. Raises ExportError.

    ``scratch``: a folder every worker can write and read (a cluster: a shared filesystem) for the
    patient buckets of pass 2; None: a private temporary folder (the local scheduler and local clusters).
    """
    files = export_files(export)
    wanted = types_read(rulesets)
    result = RunResult()
    if not any(t in files for t in MEDICATION_RESOURCES):
        raise ExportError(f"{export}: no MedicationAdministration, MedicationRequest or MedicationStatement "
                          "files: nothing can show ketamine exposure")
    result.files_read = sorted(p.name for t, ps in files.items() if t in wanted or t == "Medication" for p in ps)
    result.files_not_read = sorted(p.name for t, ps in files.items() if t not in wanted and t != "Medication"
                                   for p in ps)

    med_parts = [part for path in files.get("Medication", []) for part in partitions(path, "Medication", block_bytes)]
    medications, med_problems, med_lines = read_medications(med_parts)
    result.problems.extend(med_problems)
    result.lines_read += med_lines
    meds: Delayed = delayed(medications, traverse=False)
    first = sources[0]

    scan_parts = [part for rtype in sorted(MEDICATION_RESOURCES) for path in files.get(rtype, [])
                  for part in partitions(path, rtype, block_bytes)]
    scans = [delayed(scan_exposure, pure=True)(part, first, meds) for part in scan_parts]
    scanned = compute(scans, client, progress, "pass 1: medication files")
    exposed: set[str] = set()
    for item in scanned:
        exposed |= item["exposed"]
        result.problems.extend(item["problems"])
    result.exposed = len(exposed)

    buckets = max(1, -(-len(exposed) // max(1, patients_per_bucket)))
    assignment = bucket_map(exposed, patients_per_bucket)
    result.buckets = buckets
    read_parts = [part for rtype in sorted(files) if rtype in wanted for path in files[rtype]
                  for part in partitions(path, rtype, block_bytes)]
    exposed_ref: Delayed = delayed(assignment, traverse=False)
    own_scratch = scratch is None
    folder = Path(tempfile.mkdtemp(prefix="kbladder-shuffle-")) if scratch is None else scratch / "shuffle"
    if folder.exists() and not own_scratch:
        shutil.rmtree(folder)  # a previous run's files must not join this one's buckets
    folder.mkdir(parents=True, exist_ok=True)
    try:
        routed = delayed(all_routed, pure=True)(
            [delayed(route, pure=True)(part, exposed_ref, str(folder)) for part in read_parts])
        replays = ReplayFiles(buckets)
        written = folder / "replays"  # beside the buckets: on a cluster, the filesystem the workers share
        written.mkdir()
        replayed = [delayed(replay_bucket, pure=True)(b, str(folder), routed, tuple(sources), meds, plan,
                                                      str(written / replays.path(b).name))
                    for b in range(buckets)]
        outcomes, stats = compute((replayed, routed), client, progress,
                                  f"pass 2: {len(read_parts)} partition(s) → {buckets} bucket(s) of patients")
        for path in written.iterdir():  # kept past the shuffle folder, for the summary
            shutil.move(path, replays.folder / path.name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # Medication files are read by both passes: their lines are counted once (pass 2), their bad lines
    # reported once (the same LineProblem from both passes is one set member).
    for stat in stats:
        result.problems.extend(stat["problems"])
        result.lines_read += stat["lines"]
        result.patients_in_export += stat["patients"]
    for bucket in outcomes:
        replays.count += bucket["patients"]
        result.problems.extend(bucket["problems"])
    result.replays = replays
    result.problems = sorted(set(result.problems), key=lambda p: (p.file, p.line, p.message))
    return result

