"""JWKS cache for CDS-client keys (checklist J5): fetched from allowlisted ``jku`` URLs, keyed by ``kid``.

* A JWKS is fetched with ``requests`` (timeout, no redirects, size cap) and cached per URL.
* An unknown ``kid`` triggers one refetch, at most once per ``min_refresh_interval_s`` per URL, so a flood
  of tokens with made-up ``kid`` values cannot turn the service into a traffic amplifier.
* A cached set older than ``max_age_s`` is refetched before use (a removed key stops working); if that
  refetch fails, the old set is kept and the failure logged (an EHR outage should not stop all advice).
* Fetch failures are remembered too (negative caching), with the same refetch interval.

Only URLs the caller has already checked against the issuer's allowlist reach this module.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import requests

from cds_service.security.urls import outbound_url

log = logging.getLogger("cds_service.auth")

MAX_JWKS_BYTES = 256 * 1024


@dataclass
class _Entry:
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetched_at: float = float("-inf")  # last attempt (success or failure), monotonic
    loaded_at: float | None = None  # last success
    lock: threading.Lock = field(default_factory=threading.Lock)


def keys_by_kid(jwks: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``kid`` → public JWK for every usable entry (EC or RSA, signing use); others are ignored."""
    out: dict[str, dict[str, Any]] = {}
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    for key in keys if isinstance(keys, list) else []:
        if not isinstance(key, Mapping):
            continue
        kid = key.get("kid")
        if not isinstance(kid, str) or not kid or key.get("kty") not in ("EC", "RSA"):
            continue
        if key.get("use", "sig") != "sig" or "d" in key:  # encryption keys and private keys are not for us
            continue
        out.setdefault(kid, dict(key))  # kid must be unique; the first wins
    return out


class JwksCache:
    """Thread-safe cache of remote JWKS documents, one entry per URL."""

    def __init__(self, *, timeout_s: float = 3.0, min_refresh_interval_s: float = 60.0, max_age_s: float = 3600.0,
                 session: requests.Session | None = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.min_refresh_interval_s = min_refresh_interval_s
        self.max_age_s = max_age_s
        self._session = session or requests.Session()
        self._monotonic = monotonic
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # for tests and metrics

    def key(self, url: str, kid: str) -> dict[str, Any] | None:
        """The JWK with *kid* from the JWKS at *url*, fetching or refetching when allowed; None if absent."""
        with self._lock:
            entry = self._entries.setdefault(url, _Entry())
        with entry.lock:
            now = self._monotonic()
            stale = entry.loaded_at is None or now - entry.loaded_at >= self.max_age_s
            may_fetch = now - entry.fetched_at >= self.min_refresh_interval_s
            if (kid not in entry.keys or stale) and may_fetch:
                self._refresh(url, entry, now)
            return entry.keys.get(kid)

    def _refresh(self, url: str, entry: _Entry, now: float) -> None:
        entry.fetched_at = now
        self.fetches += 1
        try:
            keys = keys_by_kid(self._fetch(url))
        except (requests.RequestException, ValueError) as exc:
            log.warning("jwks fetch failed", extra={"fields": {"jku": url, "error": type(exc).__name__}})
            return
        entry.keys, entry.loaded_at = keys, now
        log.info("jwks loaded", extra={"fields": {"jku": url, "keys": len(keys)}})

    def _fetch(self, url: str) -> Mapping[str, Any]:
        url = outbound_url(url)  # RefusedUrl is a ValueError: logged and negatively cached like any failure
        with self._session.get(url, timeout=self.timeout_s, allow_redirects=False, stream=True,
                               headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            body = b""
            for chunk in response.iter_content(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS too large")
        data = orjson.loads(body)  # JSONDecodeError is a ValueError
        if not isinstance(data, dict):
            raise ValueError("JWKS is not an object")
        return data
