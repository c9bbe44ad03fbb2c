"""What the service does while its store is unreachable: keep advising, never lie about credentials.

A store outage must not withhold advice (every hook call refused) nor tell the EHR its credentials are
wrong (401 for a database problem). So:

* the JWT replay check (``jti``) falls back to a per-process cache while the store is unreachable: a token
  is still refused when replayed to this process; across processes the protection is weaker for the
  outage only, which is logged once per outage as a warning and shown in ``/healthz``. Claims made in the
  fallback are written to the store when it answers again, so a replay after recovery is refused;
* while the outage lasts the store is retried at most every ``retry_interval_s`` (each call does not wait
  for a dead database's connect timeout);
* card-log writes go through the governance writer, which keeps them queued while the store is down and
  writes them when it answers (counted in ``/healthz``, never raised into the hook call).

Feedback is not advice: it answers 503 with ``Retry-After`` while it cannot be stored (http/feedback.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("cds_service.store")

#: What a store raises when it cannot be reached or cannot write (driver errors arrive wrapped by SQLAlchemy).
STORE_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError)

#: Key of the app's StoreOutage in ``app.extensions``.
OUTAGE = "kbladder.store_outage"

#: Per-process replay cache bound: tokens live minutes; this many unexpired claims is far above any EHR's rate.
MAX_FALLBACK_CLAIMS = 100_000


class ClaimsJti(Protocol):
    def claim_jti(self, issuer: str, jti: str, expires_at: datetime, now: datetime) -> bool: ...


def store_outage() -> StoreOutage:
    """The StoreOutage of the app handling the current request."""
    from flask import current_app

    return current_app.extensions[OUTAGE]


class StoreOutage:
    """Outage state of one process's store, shared by the replay check, the card log and feedback."""

    def __init__(self, *, retry_interval_s: float = 5.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.retry_interval_s = retry_interval_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self.since: datetime | None = None  # wall time the current outage was noticed
        self._last_failure = float("-inf")
        self.outages = 0
        self.fallback_claims = 0
        self._claims: dict[tuple[str, str], datetime] = {}  # (issuer, jti) -> expires_at, during outages
        self._unsynced: list[tuple[str, str, datetime]] = []

    # -- state -----------------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, what: str, exc: BaseException, now: datetime) -> None:
        """The store failed: start an outage (warning once) or extend it."""
        with self._lock:
            self._last_failure = self._monotonic()
            if self.since is None:
                self.since = now
                self.outages += 1
                log.warning("store unreachable: replay check falls back to this process's cache, card log "
                            "writes wait in the queue, feedback answers 503", extra={"fields": {
                                "during": what, "error": type(exc).__name__}})

    def should_try_store(self) -> bool:
        """False while an outage is recent: the store is retried once per ``retry_interval_s``."""
        with self._lock:
            return self.since is None or self._monotonic() - self._last_failure >= self.retry_interval_s

    def recovered(self, store: ClaimsJti, now: datetime) -> None:
        """The store answered: end the outage and hand it the claims made meanwhile."""
        with self._lock:
            if self.since is None:
                return
            since, self.since = self.since, None
            pending, self._unsynced = self._unsynced, []
        synced = 0
        for issuer, jti, expires_at in pending:
            if expires_at > now:
                try:
                    store.claim_jti(issuer, jti, expires_at, now)
                    synced += 1
                except STORE_ERRORS as exc:  # best effort; this process still remembers them
                    log.warning("store: could not hand over fallback claims", extra={"fields": {
                        "error": type(exc).__name__}})
                    break
        log.warning("store reachable again", extra={"fields": {
            "outageSeconds": round((now - since).total_seconds(), 1), "claimsHandedOver": synced}})

    # -- replay check ------------------------------------------------------------------------------------

    def claim_jti(self, store: ClaimsJti, issuer: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        """The store's claim when it answers; this process's cache while it does not (see module doc)."""
        with self._lock:
            local = self._claims.get((issuer, jti))
            if local is not None and local > now:
                return False  # claimed here during an outage: replayed, whatever the store says
        if self.should_try_store():
            try:
                claimed = store.claim_jti(issuer, jti, expires_at, now)
            except STORE_ERRORS as exc:  # any store failure (driver, pool, network) is an outage
                self.failed("replay check", exc, now)
            else:
                self.recovered(store, now)
                return claimed
        return self._claim_locally(issuer, jti, expires_at, now)

    def _claim_locally(self, issuer: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        with self._lock:
            if len(self._claims) >= MAX_FALLBACK_CLAIMS:
                self._claims = {k: v for k, v in self._claims.items() if v > now}
            if len(self._claims) >= MAX_FALLBACK_CLAIMS:
                return False  # cannot remember more: refuse rather than allow an unchecked replay
            self._claims[(issuer, jti)] = expires_at
            self._unsynced.append((issuer, jti, expires_at))
            self.fallback_claims += 1
            return True

    # -- /healthz ----------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "outage": self.since is not None,
                "outageSince": self.since.isoformat() if self.since else None,
                "replayCheck": "per-process fallback" if self.since else "store",
                "outages": self.outages,
                "fallbackClaims": self.fallback_claims,
            }
