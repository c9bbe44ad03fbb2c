"""In-process measurement: the Flask app (test client), request bodies, percentiles, the JSON floor."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import orjson
from flask import Flask

from cds_service.cdshooks.hooks import HOOKS
from cds_service.decision.catalog import templates_for
from cds_service.demo import DemoPatient, hook_request

from .patients import NOW

MAX_BODY_BYTES = 64 * 1024 * 1024
RULES = Path(__file__).resolve().parent.parent / "rules"


@contextmanager
def app_for(rules_dir: Path = RULES, **overrides: Any) -> Iterator[Flask]:
    """The real app (full rule set, SQLite store in a temp folder), its clock fixed at the cohort's now.

    *overrides* are further settings (e.g. ``shadow_rules_dir`` for the governance bench)."""
    from cds_service.app import create_app
    from cds_service.config import Settings
    from cds_service.http.state import EXTENSION
    from cds_service.rules_state import RulesState
    from cds_service.store import Store
    from cds_service.warmup import warm_up

    with TemporaryDirectory(prefix="kbladder-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        store = Store(url)
        rules = RulesState([rules_dir], reload_interval_s=0)
        if rules.ruleset is None:
            raise SystemExit(f"bench: no valid rule set in {rules_dir}: {rules.current.last_error[:3]}")
        # The heavy patient's prefetch is ~8 MB: above the 1 MB default body limit, which a site raises.
        settings = Settings(database_url=url, rules_dir=str(rules_dir), reload_interval_s=0,
                            max_body_bytes=MAX_BODY_BYTES, **overrides)
        app = create_app(settings, rules_state=rules, store=store, clock=lambda: NOW)
        try:
            # as `kbladder serve` does: one warm-up call, then start-up objects frozen out of the GC
            yield warm_up(app)
        finally:
            app.extensions[EXTENSION].governance.close()  # write the log before its folder goes
            store.dispose()


def ruleset_of(app: Flask) -> Any:
    from cds_service.http.state import EXTENSION

    return app.extensions[EXTENSION].rules.ruleset


def request_bytes(app: Flask, hook: str, patient: DemoPatient, **extra: Any) -> bytes:
    """The CDS Hooks request an EHR would send, prefetch filled from the patient's resources."""
    body = hook_request(hook, patient, templates_for(ruleset_of(app), hook))
    if body is None:
        raise ValueError(f"{patient.id}: no draft order for {hook}")
    body.update(extra)
    return orjson.dumps(body)


def post(client: Any, hook: str, body: bytes) -> bytes:
    """One call: request JSON in, response JSON out."""
    response = client.post(f"/cds-services/{HOOKS[hook].service.id}", data=body, content_type="application/json")
    data = response.get_data()
    if response.status_code != 200:
        raise RuntimeError(f"{hook}: HTTP {response.status_code}: {data[:300]!r}")
    return data


@dataclass(slots=True)
class Timing:
    samples: list[float]  # ms, sorted

    def pct(self, p: float) -> float:
        s = self.samples
        return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p95(self) -> float:
        return self.pct(95)

    @property
    def p99(self) -> float:
        return self.pct(99)


def measure(fn: Callable[[], Any], iterations: int, warmup: int = 3) -> Timing:
    for _ in range(warmup):
        fn()
    samples = []
    gc.collect()
    for _ in range(iterations):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return Timing(sorted(samples))


def latency(app: Flask, hook: str, body: bytes, iterations: int, warmup: int = 3) -> tuple[Timing, bytes]:
    """Latency of one hook call with request ``body``; also a response (for the JSON floor)."""
    client = app.test_client()
    answer = post(client, hook, body)
    return measure(lambda: post(client, hook, body), iterations, warmup), answer


def json_floor(app: Flask, body: bytes, answer: bytes, iterations: int) -> Timing:
    """Decode the request and encode the response with the library the service uses (orjson both ways)."""
    decoded = orjson.loads(answer)

    def once() -> None:
        orjson.loads(body)
        orjson.dumps(decoded)

    return measure(once, iterations)


__all__ = ["HOOKS", "RULES", "Timing", "app_for", "json_floor", "latency", "measure", "post", "request_bytes"]
