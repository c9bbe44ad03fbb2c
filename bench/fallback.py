"""FHIR fallback: no prefetch, every query answered by a loopback FHIR server that waits 50 ms first.

The server runs in its own process (``python -m bench.fallback typical``), as a real FHIR server would: in the
service's process it would compete for the GIL with the hook it serves. It answers reads and searches from the
bench patient's resources (``cds_service.demo.local_search``) and reports each query's time at ``GET /_times``
(which also resets them).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import requests

DELAY_S = 0.050
ROOT = Path(__file__).resolve().parent.parent


class SlowFhir:
    """WSGI app: answers after ``DELAY_S``; records each query's time (ms, as the server sees it)."""

    def __init__(self, patient: Any) -> None:
        self.patient = patient
        self.times: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        from werkzeug.wrappers import Request, Response

        from cds_service.demo import local_search

        request = Request(environ)
        if request.path == "/_times":
            with self._lock:
                times, self.times = self.times, []
            return Response(orjson.dumps(times), 200, content_type="application/json")(environ, start_response)
        started = time.perf_counter()
        time.sleep(DELAY_S)
        path = request.path.removeprefix("/fhir/")
        query = path + (f"?{request.query_string.decode()}" if request.query_string else "")
        found = local_search(query, self.patient.id, self.patient.resources)
        if found is None:
            response = Response(b'{"resourceType":"OperationOutcome"}', 404, content_type="application/fhir+json")
        else:
            response = Response(orjson.dumps(found), 200, content_type="application/fhir+json")
        with self._lock:
            self.times.append((time.perf_counter() - started) * 1000)
        return response(environ, start_response)


@contextmanager
def slow_fhir(which: str) -> Iterator[tuple[str, Any]]:
    """(base URL, a function returning and resetting the server-side query times) of a server subprocess."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.fallback", which], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip())
        base = f"http://127.0.0.1:{port}"

        def times() -> list[float]:
            return list(requests.get(f"{base}/_times", timeout=10).json())

        yield f"{base}/fhir", times
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def fallback_request(body: dict[str, Any], fhir_url: str, patient_id: str) -> bytes:
    """The same hook request without prefetch: the service must read everything from ``fhir_url``."""
    body = {k: v for k, v in body.items() if k != "prefetch"}
    body["fhirServer"] = fhir_url
    body["fhirAuthorization"] = {"access_token": "bench-token", "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/*.read", "subject": "kbladder-cds", "patient": patient_id}
    return orjson.dumps(body)


def main() -> None:
    import logging

    from werkzeug.serving import make_server

    from . import patients

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    patient = getattr(patients, sys.argv[1] if len(sys.argv) > 1 else "typical")()
    server = make_server("127.0.0.1", 0, SlowFhir(patient), threaded=True)
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
