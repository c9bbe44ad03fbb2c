"""``python -m bench.simulate``: back-test throughput and peak memory, one process vs a 2-worker Dask cluster.

Generates a Bulk Data export (``kbladder synth --format ndjson --patients N``, split into several files per
type as export servers write them), then runs ``kbladder simulate`` on it twice, the same run each time:
``--workers 1`` (synchronous, one process) and ``--workers 2`` (a Dask LocalCluster of two worker processes
on loopback). For each: wall time, patients per second, replayed calls per second, and peak resident memory
— of the whole process tree, and of its largest process (what one worker needs) — sampled with psutil.
Ends with the projection to a 1-million-patient export: workers for a one-hour run.

Not part of ``make test`` (figures, not assertions); results go to docs/performance.md by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
KBLADDER = str(Path(sys.executable).with_name("kbladder"))
NOW = "2026-06-01T09:00:00Z"


@dataclass(slots=True)
class Measured:
    mode: str
    seconds: float
    cpu_seconds: float  # user+system of every process of the run (on a shared machine: the fair measure)
    peak_tree_mb: float
    peak_process_mb: float
    summary: dict


def _sample(process: psutil.Process, peaks: dict[str, float], cpu: dict[int, float], stop: threading.Event) -> None:
    """Every 100 ms: RSS of the process and all its descendants (sum, and the largest one), and each one's
    CPU time so far (the last value seen per process is what it used)."""
    while not stop.is_set():
        try:
            members = [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        sizes = []
        for member in members:
            try:
                sizes.append(member.memory_info().rss)
                times = member.cpu_times()
                cpu[member.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                continue
        if sizes:
            peaks["tree"] = max(peaks["tree"], sum(sizes))
            peaks["process"] = max(peaks["process"], max(sizes))
        stop.wait(0.1)


def run_simulate(export: Path, out: Path, workers: int, extra: list[str]) -> Measured:
    args = [KBLADDER, "simulate", str(export), "--out", str(out), "--workers", str(workers), "--as-of", NOW,
            "--no-progress", *extra]
    started = time.perf_counter()
    popen = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"tree": 0.0, "process": 0.0}
    cpu: dict[int, float] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(psutil.Process(popen.pid), peaks, cpu, stop), daemon=True)
    sampler.start()
    _, stderr = popen.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    if popen.returncode != 0:
        raise SystemExit(f"kbladder simulate --workers {workers} failed ({popen.returncode}):\n{stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    mode = "1 process (synchronous)" if workers == 1 else f"Dask LocalCluster, {workers} workers"
    return Measured(mode, seconds, sum(cpu.values()), peaks["tree"] / 2**20, peaks["process"] / 2**20, summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--files-per-type", type=int, default=4)
    parser.add_argument("--export", type=Path, help="Use this export instead of generating one.")
    parser.add_argument("--workers", default="1,2", help="Comma-separated worker counts to run (default 1,2).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kbladder-bench-sim-") as scratch:
        export = args.export
        if export is None:
            export = Path(scratch) / "export"
            started = time.perf_counter()
            subprocess.run([KBLADDER, "synth", "--format", "ndjson", "--patients", str(args.patients),
                            "--files-per-type", str(args.files_per_type), "--out", str(export)], check=True,
                           cwd=ROOT, stdout=subprocess.DEVNULL)
            print(f"generated {args.patients} patients in {time.perf_counter() - started:.0f} s", flush=True)
        size_mb = sum(p.stat().st_size for p in export.glob("*.ndjson*")) / 2**20
        results = []
        for workers in (int(w) for w in args.workers.split(",")):
            measured = run_simulate(export, Path(scratch) / f"out-{workers}", workers, [])
            results.append(measured)
            print(f"done: {measured.mode}: {measured.seconds:.0f} s", flush=True)
    first = results[0].summary
    patients, exposed = first["patients_in_export"], first["patients_exposed"]
    calls = first["replayed"]["order_sign_calls"] + first["replayed"]["patient_view_calls"]
    print()
    print(f"export: {patients:,} patients ({exposed:,} exposed), {first['lines_read']:,} resources, "
          f"{size_mb:.0f} MB NDJSON; replayed {calls:,} hook calls per run; cpus: {psutil.cpu_count()}; "
          f"load average at end: {', '.join(f'{x:.1f}' for x in psutil.getloadavg())}")
    print(f"{'run':36} {'wall s':>8} {'patients/s':>11} {'calls/s':>8} {'CPU s':>7} {'CPU ms/patient':>15} "
          f"{'peak RSS tree MB':>17} {'largest process MB':>19}")
    for m in results:
        print(f"{m.mode:36} {m.seconds:8.1f} {patients / m.seconds:11.1f} {calls / m.seconds:8.1f} "
              f"{m.cpu_seconds:7.0f} {1000 * m.cpu_seconds / patients:15.1f} "
              f"{m.peak_tree_mb:17.0f} {m.peak_process_mb:19.0f}")
    same = all(m.summary["rulesets"] == first["rulesets"] for m in results)
    print(f"identical summaries across runs: {same}")
    cluster = results[-1]
    workers = max(1, int(args.workers.split(",")[-1]))
    per_worker = patients / cluster.seconds / workers
    needed = math.ceil(1_000_000 / (per_worker * 3600))
    cpu_per_patient = cluster.cpu_seconds / patients
    needed_cpu = math.ceil(1_000_000 * cpu_per_patient / 3600)
    print(f"projection (this export's exposure share {exposed / patients:.0%}): by wall time "
          f"{per_worker:.2f} patients/s per worker -> ~{needed} workers for 1,000,000 patients in one hour; "
          f"by CPU time {1000 * cpu_per_patient:.1f} ms per patient -> ~{needed_cpu} dedicated worker cores")


if __name__ == "__main__":
    main()
