"""A small client for the EHR's FHIR server: bearer token, paging, one time budget, concurrency.

It never raises for what a remote server does: every query ends as a `QueryResult` whose `error` is a
short reason that is safe to show and log. The access token is sent only to `base_url`'s origin and never
appears in results, log records or `repr()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError

from cds_service.security.urls import RefusedUrl, outbound_url

log = logging.getLogger("cds_service.fhir")

FHIR_JSON = "application/fhir+json"
# A single page larger than this is refused rather than held in memory (no FetchLimits field: not a knob).
_MAX_PAGE_BYTES = 64 * 1024 * 1024
# fetch_all waits this long past the deadline for workers whose last socket timeout ends at the deadline.
_GRACE_S = 0.1


@dataclass(frozen=True)
class FetchLimits:
    """Bounds for all FHIR queries of one hook request (the EHR waits for us; see checklist G4)."""

    time_budget_s: float = 2.0  # wall time for all queries of one request together
    request_timeout_s: float = 1.5  # per HTTP call, always capped by what is left of the budget
    max_pages: int = 10  # per query
    max_workers: int = 8  # concurrent queries
    max_resources_per_query: int = 5000
    max_bytes_per_call: int = 32 * 1024 * 1024  # FHIR response bytes (decompressed) held for one hook call


class CallBudget:
    """One hook call's FHIR budget: ONE deadline and ONE byte allowance for every query, page and Medication
    read of the call, across clients and threads.

    WHY: a budget per phase (searches, then Medication reads) let a call overrun ``time_budget_s``
    (2.83 s against 2.0 s), and a byte cap per page let eight concurrent gzip-bomb pages hold 290 MiB.
    """

    def __init__(self, limits: FetchLimits) -> None:
        self.deadline = time.monotonic() + limits.time_budget_s
        self._bytes_left = limits.max_bytes_per_call
        self._lock = threading.Lock()

    def charge(self, size: int) -> bool:
        """Take *size* bytes from the allowance; False once it is spent (the caller stops reading)."""
        with self._lock:
            self._bytes_left -= size
            return self._bytes_left >= 0


@dataclass
class QueryResult:
    """Outcome of one query. `error is None` means complete; otherwise `resources` may be partial."""

    key: str
    resources: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    pages: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class _Failed(Exception):
    """Internal: stops a query with a safe reason and the HTTP status (if any) for the log."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def is_read(query: str) -> bool:
    """True for an instance read like `Patient/123` (answered by one resource, not a Bundle)."""
    path, _, _ = query.partition("?")
    segments = [s for s in path.strip("/").split("/") if s]
    return "?" not in query and len(segments) == 2 and not segments[1].startswith(("_", "$"))


def outcome_error(outcome: Mapping[str, Any]) -> str | None:
    """'OperationOutcome: <why>' if the outcome has an error/fatal issue, else None (warnings are fine)."""
    issues = [i for i in outcome.get("issue") or [] if isinstance(i, Mapping)]
    errors = [i for i in issues if i.get("severity") in ("error", "fatal")]
    if not errors:
        return None
    first = errors[0]
    details = first.get("details") if isinstance(first.get("details"), Mapping) else {}
    why = first.get("diagnostics") or details.get("text") or first.get("code") or "error"
    why = " ".join(str(why).split())  # one line: no log injection through newlines
    return f"OperationOutcome: {why[:120]}"


def searchset_resources(bundle: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """The data resources of a Bundle, and the first error-severity outcome entry (if any).

    Outcome entries (search.mode == "outcome" or OperationOutcome resources) are never returned as data;
    warnings and information are dropped silently.
    """
    resources: list[dict[str, Any]] = []
    error = None
    entries = bundle.get("entry")
    if entries is not None and not isinstance(entries, list):
        return [], "Bundle.entry is not an array"
    for entry in entries or []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("resource"), dict):
            continue
        resource = entry["resource"]
        search = entry.get("search") if isinstance(entry.get("search"), Mapping) else {}
        if resource.get("resourceType") == "OperationOutcome" or search.get("mode") == "outcome":
            error = error or outcome_error(resource)
            continue
        resources.append(resource)
    return resources, error


def next_link(bundle: Mapping[str, Any]) -> str | None:
    """URL of Bundle.link[relation=next], if any."""
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, Mapping) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None


class FhirClient:
    """Queries one FHIR server for one hook request. Not for long-lived sharing across tokens.

    `session` may be shared between clients for connection reuse: the token is sent per request,
    never stored on the session.
    """

    def __init__(
        self,
        base_url: str,
        access_token: str | None = None,
        *,
        limits: FetchLimits = FetchLimits(),  # frozen, so one shared default is safe
        session: requests.Session | None = None,
        budget: CallBudget | None = None,
    ) -> None:
        try:
            self.base_url = outbound_url(base_url).rstrip("/")
        except RefusedUrl as refused:
            raise ValueError(f"FHIR base URL must be an absolute http(s) URL ({refused.reason})") from None
        self.limits = limits
        self._budget = budget  # the hook call's; without one, each fetch_all gets its own
        self._headers = {"Accept": FHIR_JSON}
        if access_token:
            self._headers["Authorization"] = f"Bearer {access_token}"
        self._own_session = session is None
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_maxsize=max(10, limits.max_workers))
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session

    def __repr__(self) -> str:
        auth = "bearer" if "Authorization" in self._headers else "none"
        return f"FhirClient({self.base_url!r}, auth={auth}, limits={self.limits!r})"

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the session if this client created it."""
        if self._own_session:
            self.session.close()

    def fetch(self, key: str, relative_query: str) -> QueryResult:
        """Run one query (read or search, all pages) under its own time budget."""
        return self.fetch_all({key: relative_query})[key]

    def fetch_all(self, queries: Mapping[str, str]) -> dict[str, QueryResult]:
        """Run the queries of one request concurrently under ONE deadline; never waits past it."""
        if not queries:
            return {}
        budget = self._budget or CallBudget(self.limits)
        deadline = budget.deadline
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.limits.max_workers, len(queries))))
        try:
            futures = {key: pool.submit(self._run, key, query, budget) for key, query in queries.items()}
            wait(futures.values(), timeout=max(0.0, deadline - time.monotonic()) + _GRACE_S)
        finally:
            # Don't join stragglers: their socket timeouts end them soon; the caller must not wait.
            pool.shutdown(wait=False, cancel_futures=True)
        results = {}
        for key, future in futures.items():
            if future.done() and not future.cancelled():
                results[key] = future.result()
            else:
                log.warning("fhir query %s: time budget exceeded (still running at the deadline)", key)
                results[key] = QueryResult(key, error="time budget exceeded")
        return results

    def _run(self, key: str, query: str, budget: CallBudget) -> QueryResult:
        """Fetch a query and its next pages; turn every failure into a reason."""
        started = time.monotonic()
        result = QueryResult(key)
        status: int | None = None
        try:
            for status, body in self._pages(query, budget, result):
                resources, error = self._page_resources(query, body, first=result.pages == 1)
                result.resources.extend(resources)
                limit = self.limits.max_resources_per_query
                if len(result.resources) > limit:
                    del result.resources[limit:]
                    raise _Failed(f"resource limit reached ({limit} resources)", status)
                if error:
                    raise _Failed(error, status)
        except _Failed as failed:
            # a server may echo what it was sent (e.g. in OperationOutcome diagnostics)
            token = self._headers.get("Authorization", "").removeprefix("Bearer ")
            result.error = failed.reason.replace(token, "***") if token else failed.reason
            status = failed.status or status
        elapsed_ms = round((time.monotonic() - started) * 1000)
        if result.error:
            log.warning("fhir query %s failed: %s (status=%s, %d ms, %d pages, %d resources)",
                        key, result.error, status, elapsed_ms, result.pages, len(result.resources))
        else:
            log.debug("fhir query %s: status=%s, %d ms, %d pages, %d resources",
                      key, status, elapsed_ms, result.pages, len(result.resources))
        return result

    def _pages(self, query: str, budget: CallBudget, result: QueryResult) -> Iterator[tuple[int, Any]]:
        """Yield (status, JSON body) of the first page and each `next` page, guarding token and loops."""
        if query.lower().startswith(("http://", "https://")):  # e.g. the next link of a prefetched Bundle
            url = self._judged(query, "next link refused")
        else:
            url = self._judged(f"{self.base_url}/{query.lstrip('/')}", "query refused")
        seen: set[str] = set()
        while True:
            seen.add(url)
            status, body = self._get(url, budget)
            result.pages += 1
            yield status, body
            is_bundle = isinstance(body, Mapping) and body.get("resourceType") == "Bundle"
            link = next_link(body) if is_bundle else None
            if link is None:
                return
            try:
                joined = urljoin(url, link)  # next links may be relative
            except ValueError:
                raise _Failed("next link refused: not a valid URL", status) from None
            link = self._judged(joined, "next link refused", status)
            if link in seen:
                raise _Failed("paging loop", status)
            if result.pages >= self.limits.max_pages:
                raise _Failed(f"page limit reached ({self.limits.max_pages} pages)", status)
            url = link

    def _judged(self, url: str, what: str, status: int | None = None) -> str:
        """The URL to send, if the token may go there (same origin, under the base path); else the query stops.

        Every URL this client fetches passes here: the first query, prefetched and server next links,
        Medication reads. A refused URL is never followed; the key is reported as missing data.
        """
        try:
            return outbound_url(url, self.base_url)
        except RefusedUrl as refused:
            raise _Failed(f"{what}: {refused.reason}", status) from None

    @staticmethod
    def _page_resources(query: str, body: Any, *, first: bool) -> tuple[list[dict[str, Any]], str | None]:
        """Resources of one page: the entries of a Bundle, or the one resource of a read."""
        read = first and is_read(query)
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            return [], "not a FHIR resource" if read else "not a FHIR Bundle"
        if body["resourceType"] == "OperationOutcome":
            return [], outcome_error(body) or "OperationOutcome"
        if read:
            return [body], None
        if body["resourceType"] == "Bundle":
            return searchset_resources(body)
        return [], "not a FHIR Bundle"

    def _get(self, url: str, budget: CallBudget) -> tuple[int, Any]:
        """One GET: headers on every call, no redirects, timeout capped by the deadline, JSON decoded."""
        remaining = budget.deadline - time.monotonic()
        if remaining <= 0:
            raise _Failed("time budget exceeded")
        timeout = min(self.limits.request_timeout_s, remaining)
        late = "time budget exceeded" if timeout < self.limits.request_timeout_s else "timeout"
        try:
            with self.session.get(url, headers=self._headers, timeout=timeout,
                                  allow_redirects=False, stream=True) as resp:
                status = resp.status_code
                if 300 <= status < 400:
                    raise _Failed("redirect refused", status)
                if not 200 <= status < 300:
                    raise _Failed(f"HTTP {status}", status)
                raw = self._read(resp, budget)
        except requests.Timeout:
            raise _Failed(late) from None
        except requests.ConnectionError as exc:
            # requests reports a read timeout inside the body as a ConnectionError
            timed_out = bool(exc.args) and isinstance(exc.args[0], ReadTimeoutError)
            raise _Failed(late if timed_out else "connection failed") from None
        except requests.RequestException:
            raise _Failed("request failed") from None  # the exception text may hold the URL: not kept
        try:
            return status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _Failed("invalid JSON", status) from None

    @staticmethod
    def _read(resp: requests.Response, budget: CallBudget) -> bytes:
        """Read the (decompressed) body in chunks: a slow but steady response still stops at the deadline,
        and a large or gzip-bomb one at the call's byte allowance."""
        chunks, size = [], 0
        for chunk in resp.iter_content(chunk_size=65536):
            size += len(chunk)
            if size > _MAX_PAGE_BYTES:
                raise _Failed("response too large", resp.status_code)
            if not budget.charge(len(chunk)):
                raise _Failed("FHIR byte budget exceeded", resp.status_code)
            chunks.append(chunk)
            if time.monotonic() > budget.deadline:
                raise _Failed("time budget exceeded", resp.status_code)
        return b"".join(chunks)
