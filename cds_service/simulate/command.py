"""``kbladder simulate``: options in, a Dask client chosen, the back-test run, results written.

The edge of the back-test: it reads the rule folders, starts (or connects to) the Dask scheduler and writes
files; everything it calls below is either pure (replay, summary) or the Dask graph (pipeline).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cds_service.clinical.timeutil import TimeError, iso, parse_instant
from cds_service.fhir.client import FhirClient
from cds_service.simulate.ndjson import MANIFEST, ExportError, export_files
from cds_service.simulate.output import build_summary, write_outputs
from cds_service.simulate.pipeline import PATIENTS_PER_BUCKET, RunResult, run
from cds_service.simulate.replay import Plan
from cds_service.simulate.rulesource import RulesError, RuleSource, snapshot

EXIT_OK, EXIT_UNUSABLE = 0, 2


class UnusableInput(Exception):
    """Exit status 2: the run cannot start (a clear message, naming the file or option)."""


@dataclass(frozen=True, slots=True)
class Request:
    export: Path | None
    out: Path
    rules: Path
    site: Path | None = None
    compare: Path | None = None
    compare_site: Path | None = None
    as_of: tuple[str, ...] = ()
    every_days: int | None = None
    workers: int = 1
    scheduler: str | None = None
    patients_per_bucket: int = PATIENTS_PER_BUCKET
    progress: bool = True
    fhir: str | None = None  # a FHIR base URL instead of an export
    fhir_token: str | None = None
    patients: tuple[str, ...] = ()  # with fhir: the patient ids to replay


def parse_times(values: Sequence[str]) -> tuple[datetime, ...]:
    try:
        return tuple(sorted({parse_instant(v) for v in values}))
    except TimeError as exc:
        raise UnusableInput(f"--as-of: {exc}") from exc


def export_time(export: Path) -> datetime | None:
    """The export's transactionTime (the end of its data), if its manifest says."""
    manifest = export / MANIFEST
    try:
        stamp = json.loads(manifest.read_text(encoding="utf-8")).get("transactionTime")
        return parse_instant(stamp) if isinstance(stamp, str) else None
    except (OSError, ValueError, AttributeError):
        return None


def load_rules(request: Request) -> tuple[list[RuleSource], list[Any]]:
    sources, rulesets = [], []
    wanted = [("rules", request.rules, request.site)]
    if request.compare is not None:
        wanted.append(("compare", request.compare, request.compare_site or request.site))
    for label, folder, site in wanted:
        try:
            source, ruleset = snapshot(label, folder, site)
        except (RulesError, OSError) as exc:
            raise UnusableInput(f"{'--compare' if label == 'compare' else '--rules'} {folder}:\n{exc}") from exc
        sources.append(source)
        rulesets.append(ruleset)
    if len(sources) == 2 and sources[0].digest == sources[1].digest:
        raise UnusableInput(f"--compare {request.compare}: the same rules as --rules {request.rules} "
                            "(nothing to compare)")
    return sources, rulesets


@contextmanager
def dask_client(workers: int, scheduler: str | None) -> Iterator[Any]:
    """None (synchronous, this process) for one worker; a loopback LocalCluster of processes; or a cluster."""
    if scheduler is not None:
        from distributed import Client

        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise UnusableInput(f"--scheduler {scheduler}: cannot connect ({exc})") from exc
        with client:
            yield client
        return
    if workers <= 1:
        yield None
        return
    from distributed import Client, LocalCluster

    with (LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                       scheduler_port=0, dashboard_address=None) as cluster,
          Client(cluster) as client):
        yield client


def simulate(request: Request) -> tuple[RunResult, dict[str, Any]]:
    """Run the back-test and write its outputs; raises UnusableInput (exit 2)."""
    if (request.export is None) == (request.fhir is None):
        raise UnusableInput("give either EXPORT (a Bulk Data export folder) or --fhir URL with --patient ids")
    if request.fhir is not None and not request.patients:
        raise UnusableInput("--fhir: name the patients to replay with --patient ID (repeatable)")
    if request.out.exists() and not request.out.is_dir():
        raise UnusableInput(f"--out {request.out}: exists and is not a folder")
    times = parse_times(request.as_of)
    fhir = None
    if request.fhir is not None:
        from cds_service.simulate.fhirsource import FhirSource

        try:
            FhirClient(request.fhir)  # the service's outbound-URL judge, before any work
        except ValueError as exc:
            raise UnusableInput(f"--fhir {request.fhir}: {exc}") from exc
        fhir = FhirSource(request.fhir, request.fhir_token)
    else:
        assert request.export is not None
        try:
            export_files(request.export)  # an unusable export is reported before the rules are loaded
        except ExportError as exc:
            raise UnusableInput(str(exc)) from exc
    sources, rulesets = load_rules(request)
    plan = Plan(as_of=times, every_days=request.every_days,
                end=export_time(request.export) if request.export else None)
    try:
        with dask_client(request.workers, request.scheduler) as client:
            if fhir is not None:
                from cds_service.simulate.fhirsource import run_fhir

                result = run_fhir(fhir, request.patients, sources, rulesets, plan, client=client,
                                  progress=request.progress)
            else:
                assert request.export is not None
                # A remote cluster's workers share the bucket files through --out (a shared filesystem).
                scratch = request.out if request.scheduler else None
                result = run(request.export, sources, rulesets, plan, client=client, progress=request.progress,
                             patients_per_bucket=request.patients_per_bucket, scratch=scratch)
    except ExportError as exc:
        raise UnusableInput(str(exc)) from exc
    labels = {source.label: {rule.id: rule.version for rule in ruleset.rules}
              for source, ruleset in zip(sources, rulesets, strict=True)}
    data = build_summary(
        result, labels, export=str(request.export or request.fhir),
        ruleset_versions={source.label: source.version for source in sources},
        plan={"as_of": [iso(t) for t in times], "every_days": request.every_days,
              "end": iso(plan.end) if plan.end else None,
              "scheduler": request.scheduler or ("synchronous" if request.workers <= 1
                                                 else f"local cluster, {request.workers} worker processes")})
    write_outputs(request.out, result, data)
    return result, data


def default_workers() -> int:
    """One worker process per core the machine gives this process (at least one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
