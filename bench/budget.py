"""One FHIR budget per hook call: wall time with a slow Medication read, peak memory with gzip-bomb pages.

``python -m bench.budget [--tree PATH]`` prints two figures. Each hook call runs in a fresh child process
(so its peak RSS is its own) against a loopback FHIR server in this process:

* time: ``time_budget_s`` 2.0; the Observation search answers after 1.2 s, the Medication read after
  1.5 s. One budget per call ends the call near 2.0 s; a fresh budget for the Medication read ran ~2.7 s.
* memory: every search answers a 64 MiB (decompressed) gzip bomb, time budget 60 s (so bytes, not time,
  bound the call); the child's peak RSS before and after the call. The call's byte allowance
  (``max_bytes_per_call``, 32 MiB) bounds what it holds.

``--tree`` runs the children on another checkout's ``cds_service`` (e.g. ``git archive`` of an older main),
which is how the "before" figures are made.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KETAMINE = {"coding": [{"system": "http://snomed.info/sct", "code": "781954001"}]}
BOMB_BYTES = 64 * 1024 * 1024


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def _resources() -> list[dict[str, Any]]:
    when = "2026-11-20T10:00:00+00:00"
    return [
        {"resourceType": "MedicationAdministration", "id": "ma1", "status": "completed",
         "medicationReference": {"reference": "Medication/ket-50"}, "subject": {"reference": "Patient/p1"},
         "effectiveDateTime": when, "dosage": {"dose": {"value": 35, "unit": "mg",
                                                        "system": "http://unitsofmeasure.org", "code": "mg"}}},
        {"resourceType": "Medication", "id": "ket-50", "code": KETAMINE},
        {"resourceType": "Observation", "id": "o1", "status": "final",
         "code": {"coding": [{"system": "http://loinc.org", "code": "5794-3"}]},
         "subject": {"reference": "Patient/p1"}, "effectiveDateTime": when, "valueString": "1+"},
    ]


class Fhir:
    """WSGI FHIR server: 'slow' delays Observation and Medication; 'bomb' answers every search with a bomb."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        body = json.dumps(_bundle()).encode()
        self.bomb = gzip.compress(body[:-1] + b" " * (BOMB_BYTES - len(body)) + b"}", compresslevel=9)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        from werkzeug.wrappers import Request, Response

        request = Request(environ)
        rtype = request.path.removeprefix("/fhir/").split("/")[0]
        if rtype == "Patient":
            body, headers = json.dumps({"resourceType": "Patient", "id": "p1", "gender": "female"}).encode(), {}
        elif self.mode == "bomb":
            body, headers = self.bomb, {"Content-Encoding": "gzip"}
        else:
            time.sleep({"Observation": 1.2, "Medication": 1.5}.get(rtype, 0.0))
            body, headers = json.dumps(_bundle(*(r for r in _resources() if r["resourceType"] == rtype))).encode(), {}
        return Response(body, 200, headers=headers, content_type="application/fhir+json")(environ, start_response)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(base: str, mode: str) -> None:
    """One hook call in this (fresh) process; prints elapsed seconds and peak RSS before/after as JSON."""
    import cds_service
    from cds_service.app import create_app
    from cds_service.config import Settings
    from cds_service.fhir.client import FetchLimits
    from cds_service.rules_state import RulesState
    from cds_service.store import Store

    rules = RulesState([Path(cds_service.__file__).resolve().parents[1] / "rules"], reload_interval_s=0)
    # bomb: a generous time budget, so that bytes, not time, are what bounds the call
    seconds = 2.0 if mode == "slow" else 60.0
    limits = FetchLimits(time_budget_s=seconds, request_timeout_s=seconds)
    app = create_app(Settings(database_url="sqlite://", reload_interval_s=0, fetch_limits=limits),
                     rules_state=rules, store=Store("sqlite://"))
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/u1", "patientId": "p1"}, "fhirServer": base,
            "fhirAuthorization": {"access_token": "bench", "token_type": "Bearer", "expires_in": 300,
                                  "scope": "patient/*.read", "subject": "kbladder-cds"}}
    with app.test_client() as client:
        client.get("/cds-services")
        before = _rss_mib()
        started = time.monotonic()
        response = client.post("/cds-services/kbladder-patient-view", json=body)
        elapsed = time.monotonic() - started
    missing = {m["key"]: m["reason"] for m in (response.get_json() or {}).get("extension", {})
               .get("org.kbladder-cds.missingData", [])}
    print(json.dumps({"status": response.status_code, "elapsed_s": elapsed, "rss_before_mib": before,
                      "rss_peak_mib": _rss_mib(), "missing": missing}))


def _serve(mode: str) -> tuple[str, Any]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, Fhir(mode), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/fhir", server


def run(mode: str, tree: Path | None) -> dict[str, Any]:
    base, server = _serve(mode)
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    try:
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", base, "--mode", mode],
                             env=env,
                             capture_output=True, text=True, timeout=300, check=True, cwd=str(tree or ROOT))
    finally:
        server.shutdown()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--tree", type=Path)
    parser.add_argument("--mode", default="slow")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mode)
        return
    slow = run("slow", args.tree)
    print(f"slow Medication read: hook call {slow['elapsed_s']:.2f} s against time_budget_s 2.0 "
          f"(medication: {slow['missing'].get('medication', 'read completed')})")
    bomb = run("bomb", args.tree)
    print(f"gzip-bomb pages (64 MiB each, every search): peak RSS {bomb['rss_before_mib']:.0f} MiB before the "
          f"call, {bomb['rss_peak_mib']:.0f} MiB after; HTTP {bomb['status']}; "
          f"missing: {sorted(set(bomb['missing'].values()))}")


if __name__ == "__main__":
    main()
