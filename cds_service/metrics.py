"""Prometheus metrics: what an integration team watches (latency per hook, cards, undecided and suppressed
rules, FHIR failures, JWT refusals, rule reloads and the live rule-set version).

Labels are only ever values from a closed set: hook names from the hook table, rule ids and indicators
from the loaded rule files, HTTP statuses, route templates and reason codes mapped from our own failure
texts. Never a patient, user, token, URL or free text — anything unrecognised becomes ``other``.

Several gunicorn workers: ``kbladder serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before
the workers fork (:func:`enable_multiprocess`); each worker writes its own files and ``/metrics`` adds
them up (prometheus_client's multi-process mode).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client import multiprocess as prom_multiprocess

from cds_service.engine.cards import EXT

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Hook latency buckets (seconds): the spec asks for ~500 ms, EHRs give up after a few seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
NONE = "none"
OTHER = "other"


class Metrics:
    """One set of metric objects for one app (tests build many apps; each gets its own registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.hook_latency = Histogram(
            "kbladder_hook_duration_seconds", "Time to answer a hook call, by hook and HTTP status.",
            ["hook", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter(
            "kbladder_http_requests_total", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=r)
        self.cards = Counter(
            "kbladder_cards_total", "Cards returned, by rule and indicator.", ["rule", "indicator"], registry=r)
        self.undecided = Counter(
            "kbladder_rule_undecided_total",
            "Rules that could not be decided (data missing or unavailable), by rule.", ["rule"], registry=r)
        self.suppressed = Counter(
            "kbladder_rule_suppressed_total", "Rules that fired but whose card was suppressed, by rule.",
            ["rule"], registry=r)
        self.fhir_failures = Counter(
            "kbladder_fhir_fetch_failures_total", "FHIR data that could not be obtained, by reason.",
            ["reason"], registry=r)
        self.jwt_refusals = Counter(
            "kbladder_jwt_refusals_total", "Requests refused with 401, by reason.", ["reason"], registry=r)
        self.reloads = Counter(
            "kbladder_rule_reloads_total", "Rule-set reload attempts: ok (new set live) or refused (old set kept).",
            ["outcome"], registry=r)
        self.rule_set = Gauge(
            "kbladder_rule_set_info", "The rule-set version this process serves (value 1).", ["version"],
            registry=r, multiprocess_mode="livemax")
        self.rules_loaded = Gauge(
            "kbladder_rules_loaded", "Rules in the live rule set.", registry=r, multiprocess_mode="livemax")
        self._version: str | None = None
        for outcome in ("ok", "refused"):  # both series exist from the start: rate() needs a zero
            self.reloads.labels(outcome=outcome)

    # -- what the service calls -----------------------------------------------------------------------

    def serving(self, version: str | None, rules: int) -> None:
        """The live rule set changed (start or reload): exactly one version series is 1."""
        if self._version is not None and self._version != version:
            self.rule_set.labels(version=self._version).set(0)
        if version is not None:
            self.rule_set.labels(version=version).set(1)
        self._version = version
        self.rules_loaded.set(rules)

    def reloaded(self, ok: bool, version: str | None, rules: int) -> None:
        self.reloads.labels(outcome="ok" if ok else "refused").inc()
        self.serving(version, rules)

    def request(self, route: str | None, method: str, status: int, hook: str | None, seconds: float) -> None:
        """One HTTP request; hook calls (*hook* set, or a hook route) also feed the latency histogram."""
        self.requests.labels(route=route or "unmatched", method=_method(method), status=str(status)).inc()
        if hook is not None:
            self.hook_latency.labels(hook=hook or NONE, status=str(status)).observe(seconds)

    def decision(self, cards: Iterable[Mapping[str, Any]], undecided: Iterable[str], suppressed: Iterable[str],
                 missing: Mapping[str, str]) -> None:
        """What one hook call decided: cards by rule and indicator, undecided and suppressed rules, data failures."""
        for card in cards:
            rule = card_rule(card)
            self.cards.labels(rule=rule or NONE, indicator=_indicator(card.get("indicator"))).inc()
        for rule in undecided:
            self.undecided.labels(rule=rule).inc()
        for rule in suppressed:
            self.suppressed.labels(rule=rule).inc()
        for reason in missing.values():
            self.fhir_failures.labels(reason=fhir_failure_reason(reason)).inc()

    def jwt_refused(self, reason: str) -> None:
        self.jwt_refusals.labels(reason=jwt_reason(reason)).inc()

    # -- exposition -----------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text format for a scrape: every worker's files in multi-process mode, else this registry."""
        directory = os.environ.get(MULTIPROC_ENV)
        if directory:
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry, path=directory)
            return generate_latest(registry)
        return generate_latest(self.registry)


def card_rule(card: Mapping[str, Any]) -> str | None:
    """The rule id a card names in its extension (every card of ours does: clinical safety)."""
    extension = card.get("extension")
    if not isinstance(extension, Mapping):
        return None
    rule = extension.get(f"{EXT}.rule")
    rule_id = rule.get("id") if isinstance(rule, Mapping) else None
    return rule_id if isinstance(rule_id, str) and _RULE_ID.fullmatch(rule_id) else None


_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_INDICATORS = frozenset({"info", "warning", "critical"})
_METHODS = frozenset({"GET", "POST", "OPTIONS", "HEAD", "PUT", "DELETE", "PATCH"})


def _indicator(value: object) -> str:
    return value if isinstance(value, str) and value in _INDICATORS else OTHER


def _method(value: str) -> str:
    return value if value in _METHODS else OTHER


#: Our own FHIR failure texts (fhir/client.py, fhir/prefetch.py) → reason codes. First match wins.
_FHIR_REASONS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.I), code) for pattern, code in (
        (r"^prefetch operationoutcome", "prefetch_outcome"),
        (r"^invalid prefetch value", "prefetch_invalid"),
        (r"time budget|timed out|timeout", "timeout"),
        (r"^connection failed|^request failed", "connection"),
        (r"^invalid json|not json", "invalid_json"),
        (r"too large|byte", "too_large"),
        (r"limit reached", "limit"),
        (r"next link|paging loop", "paging"),
        (r"redirect", "redirect"),
        (r"no fhir (server )?access", "no_fhir_access"),
        (r"not allowed|refused", "refused"),
    )
)
_HTTP_STATUS = re.compile(r"^HTTP (\d{3})\b")


def fhir_failure_reason(text: str) -> str:
    """A closed-set reason code for a FHIR failure text (``http_404``, ``timeout``, … or ``other``)."""
    if not isinstance(text, str):
        return OTHER
    status = _HTTP_STATUS.match(text)
    if status:
        return f"http_{status.group(1)}"
    return next((code for pattern, code in _FHIR_REASONS if pattern.search(text)), OTHER)


def jwt_reason(text: str) -> str:
    """``jti replayed`` → ``jti_replayed``: our refusal reasons are fixed texts, slugged into a label."""
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48] if isinstance(text, str) else ""
    return slug or OTHER


# -- several worker processes ------------------------------------------------------------------------------


def enable_multiprocess(directory: str | Path | None = None) -> Path:
    """Before gunicorn forks: a clean folder in ``PROMETHEUS_MULTIPROC_DIR`` and multi-process values.

    A folder named by the operator is emptied of our old ``*.db`` files (counters of a previous run must not
    add up with this one); otherwise a fresh temporary folder is made.
    """
    chosen = directory or os.environ.get(MULTIPROC_ENV)
    if chosen:
        path = Path(chosen)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="kbladder-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    # prometheus_client picks the value class when first imported: pick again now that the folder is set.
    values.ValueClass = values.get_value_class()
    return path


def worker_exited(pid: int) -> None:
    """gunicorn ``child_exit``: drop a dead worker's live gauges (its counters stay counted)."""
    if os.environ.get(MULTIPROC_ENV):
        prom_multiprocess.mark_process_dead(pid)


def remove_multiprocess_dir(path: Path) -> None:
    """After the master stops: the folder we made is ours to remove."""
    shutil.rmtree(path, ignore_errors=True)
