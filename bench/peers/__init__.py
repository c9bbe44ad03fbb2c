"""Peers in the bench: KB-02 decided by our engine, by a hand-written Python function (the logic floor)
and by the CQL engine the anchor CDS Hooks servers run (cql-execution + cql-exec-fhir), on the same
patients. Node and the npm packages are installed here by the bench itself (`npm ci`-style into
bench/peers/node_modules, ignored by git); without Node the CQL row says so and the rest still runs.

All three must agree on every patient's verdict before any time is reported: a faster wrong answer
measures nothing.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cds_service.clinical.record import PatientRecord
from cds_service.engine.evaluate import evaluate
from cds_service.engine.loader import load_ruleset
from cds_service.engine.model import RuleSet
from cds_service.fhir.parse import parse_resources

from .handwritten import Codes, kb02
from .kb02_cql import kb02_cql

HERE = Path(__file__).resolve().parent
RULES = HERE.parent.parent / "rules"


@dataclass(slots=True)
class PeerRow:
    measure: str
    value: str
    baseline: str = ""
    ratio: str = ""


def kb02_ruleset() -> RuleSet:
    """The shipped KB-02 rule file with the shipped value sets, and no other rule."""
    with tempfile.TemporaryDirectory(prefix="kbladder-kb02-") as tmp:
        for folder in ("valuesets", "codesystem", "schema"):
            if (RULES / folder).exists():
                shutil.copytree(RULES / folder, Path(tmp) / folder)
        for rule in RULES.glob("KB-02-*.yaml"):
            shutil.copy(rule, tmp)
        loaded = load_ruleset([tmp])
    if loaded.ruleset is None:
        raise SystemExit(f"bench: KB-02 does not load: {loaded.problems[:3]}")
    return loaded.ruleset


def _engine(ruleset: RuleSet, resources: list[dict[str, Any]], now: datetime) -> Callable[[], str | None]:
    valid, _ = parse_resources(resources)

    def decide() -> str | None:
        record = PatientRecord(valid, drafts=[], ordinal_codes=ruleset.ordinal_codes)
        result = evaluate(ruleset, record, hook="patient-view", now=now).results[0]
        return result.fired.indicator if result.fired is not None else None

    return decide


def _median_ms(call: Callable[[], Any], rounds: int) -> float:
    call()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _ensure_node_packages(log: Callable[[str], None]) -> str | None:
    """Install the pinned npm packages once; returns why the CQL row cannot run, or None."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "skipped: Node.js/npm not installed (Debian: apt-get install nodejs npm)"
    if not (HERE / "node_modules" / "cql-execution").exists():
        log("peers: npm install (cql-execution, cql-exec-fhir, @cqframework/cql) into bench/peers")
        proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=HERE,
                              capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            return f"skipped: npm install failed: {proc.stderr.strip()[-300:]}"
    return None


def _cql(cql_text: str, resources: Sequence[dict[str, Any]], now: datetime, rounds: int) -> tuple[float, Any]:
    with tempfile.TemporaryDirectory(prefix="kbladder-cql-") as tmp:
        work = Path(tmp)
        (work / "kb02.cql").write_text(cql_text)
        (work / "bundle.json").write_text(json.dumps(
            {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}))
        (work / "now.txt").write_text(now.isoformat().replace("+00:00", "Z"))
        proc = subprocess.run(["node", str(HERE / "cql_runner.mjs"), str(work), str(rounds)], cwd=HERE,
                              capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench: the CQL engine failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return statistics.median(out["ms"]), out["indicator"]


def peer_rows(patients: Sequence[tuple[str, list[dict[str, Any]]]], checks: Sequence[tuple[str, list[dict[str, Any]]]],
              now: datetime, quick: bool, with_cql: bool, log: Callable[[str], None]) -> list[PeerRow]:
    """Rows for each timed patient; ``checks`` are extra patients on which the three must agree too."""
    ruleset = kb02_ruleset()
    codes = Codes.of(ruleset.valuesets)
    cql_text = kb02_cql(ruleset.valuesets)
    why_not = _ensure_node_packages(log) if with_cql else "not run with --quick (needs Node.js and npm packages)"
    rows: list[PeerRow] = []
    for label, resources in [*checks, *patients]:
        ours = _engine(ruleset, resources, now)()
        floor = kb02(resources, codes, now)
        if ours != floor:
            raise SystemExit(f"bench: KB-02 verdicts differ on {label}: engine {ours}, hand-written {floor}")
        if why_not is None:
            _, by_cql = _cql(cql_text, resources, now, 1)
            if by_cql != ours:
                raise SystemExit(f"bench: KB-02 verdicts differ on {label}: engine {ours}, CQL {by_cql}")
        log(f"peers: {label}: all agree on KB-02 = {ours}")
    rounds = 20 if quick else 300
    for label, resources in patients:
        n = rounds if len(resources) < 500 else max(5, rounds // 10)
        ours_ms = _median_ms(_engine(ruleset, resources, now), n)
        floor_ms = _median_ms(lambda r=resources: kb02(r, codes, now), n)
        rows.append(PeerRow(f"KB-02 on the {label} patient: our engine", f"{ours_ms:.3f} ms"))
        rows.append(PeerRow(f"KB-02 on the {label} patient: hand-written Python (floor)", f"{floor_ms:.3f} ms",
                            f"ours {ours_ms:.3f} ms", f"ours {ours_ms / floor_ms:.1f}× floor"))
        if why_not is None:
            cql_ms, _ = _cql(cql_text, resources, now, n)
            rows.append(PeerRow(f"KB-02 on the {label} patient: CQL (cql-execution 3.3.2)", f"{cql_ms:.3f} ms",
                                f"ours {ours_ms:.3f} ms", f"ours {cql_ms / ours_ms:.0f}× faster"))
        else:
            rows.append(PeerRow(f"KB-02 on the {label} patient: CQL (cql-execution)", why_not))
    return rows
