"""What the edges ask of the store, as a Protocol: the HTTP layer depends on this, not on SQLAlchemy.

The concrete :class:`cds_service.store.Store` (SQLite or PostgreSQL through SQLAlchemy) implements it;
another backend implements these methods and is passed to ``create_app(store=...)``. New capabilities an
edge needs (a decision log, say) are added here and in every backend, so the edge never reaches past it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Protocol, runtime_checkable

from cds_service.cdshooks.feedback import FeedbackItem

#: (card uuid, rule id, rule version, indicator): one issued card in the issue log.
CardIssue = tuple[str, str, str, str]


@runtime_checkable
class ServiceStore(Protocol):
    """The store as the service uses it: issued cards, feedback, JWT replay, reachability."""

    def ping(self) -> bool:
        """True when the store answers (readiness and health)."""
        ...

    def record_cards(self, hook_instance: str, service_id: str, cards: Iterable[CardIssue], now: datetime) -> int:
        """Log which rule and version produced each issued card; returns how many were new."""
        ...

    def record_feedback(
        self, service_id: str, item: FeedbackItem, *, rule_id: str | None = None, rule_version: str | None = None
    ) -> bool:
        """Store one feedback item; False when the same outcome was already recorded."""
        ...

    def record_feedback_items(self, service_id: str, items: Iterable[FeedbackItem]) -> int:
        """Store the items of one feedback call in one transaction (all or none); returns how many were new."""
        ...

    def claim_jti(self, issuer: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        """Claim a JWT id once; False when it was already used (a replay)."""
        ...

    def dispose(self) -> None:
        """Release connections (at shutdown)."""
        ...
