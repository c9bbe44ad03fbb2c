"""``python -m bench.server_path``: where the time goes between an HTTP client and the app.

One client, one request at a time (no queueing), against the production server (gunicorn, 2 workers, the
``kbladder serve`` options; ``bench.serve_bench``), for the typical patient's order-sign:

* ``bare``: the same server answering a fixed body after reading the request (HTTP + gunicorn + client);
* ``hook over HTTP``: the real hook call;
* ``hook in-process``: the same body through the Flask test client in this process (no socket, no gunicorn).

``hook over HTTP − hook in-process − bare`` is what the server path adds to a call beyond a bare request:
WSGI, Flask's request/response objects, the access log and metrics hooks as configured in production.
Rounds alternate the three; medians with the spread. Figures only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import requests

from cds_service.cdshooks.hooks import HOOKS

from .harness import app_for, latency, request_bytes
from .http_load import Server
from .patients import typical
from .serve_bench import BARE_PATH


def sequential(url: str, body: bytes, count: int) -> float:
    """Median ms of ``count`` POSTs, one at a time, on one keep-alive session."""
    session = requests.Session()
    headers = {"Content-Type": "application/json"}
    for _ in range(3):
        session.post(url, data=body, headers=headers, timeout=60)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        response = session.post(url, data=body, headers=headers, timeout=60)
        samples.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}")
    return statistics.median(samples)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
    path = f"/cds-services/{HOOKS['order-sign'].service.id}"
    figures: dict[str, list[float]] = {"bare": [], "hook over HTTP": [], "hook in-process": []}
    with app_for() as app, Server() as server:
        body = request_bytes(app, "order-sign", typical())
        for number in range(1, args.rounds + 1):
            print(f"· round {number} of {args.rounds}", file=sys.stderr, flush=True)
            figures["bare"].append(sequential(server.url + BARE_PATH, body, args.calls))
            figures["hook over HTTP"].append(sequential(server.url + path, body, args.calls))
            timing, _ = latency(app, "order-sign", body, args.calls, 3)
            figures["hook in-process"].append(timing.p50)
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print(f"typical order-sign, {len(body) // 1024} kB request, one client, median of {args.rounds} rounds (spread)")
    for name, values in figures.items():
        print(f"  {name:<18} {medians[name]:7.2f} ms  ({min(values):.2f}–{max(values):.2f})")
    added = medians["hook over HTTP"] - medians["hook in-process"] - medians["bare"]
    print(f"  server path adds {added:.2f} ms beyond a bare request "
          f"({medians['hook over HTTP']:.2f} − {medians['hook in-process']:.2f} − {medians['bare']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
