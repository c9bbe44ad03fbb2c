"""What the edges ask of the store, as a Protocol: the HTTP layer depends on this, not on SQLAlchemy.

The concrete :class:`cds_service.store.Store` (SQLite or PostgreSQL through SQLAlchemy) implements it;
another backend implements these methods and is passed to ``create_app(store=...)``. New capabilities an
edge needs (a decision log, say) are added here and in every backend, so the edge never reaches past it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from cds_service.cdshooks.feedback_request import FeedbackItem

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

    # -- decision log and snoozes (governance) --------------------------------------------------------

    def write_calls(self, calls: Iterable[Any]) -> int:
        """Write many hook calls' decision logs and card issues in one transaction (background writer)."""
        ...

    def issued_card(self, card_uuid: str) -> Any:
        """The issued card (service, rule, version, indicator, patient hash, evidence hashes) or None."""
        ...

    def shown_recently(self, *, patient_hash: str, user_hash: str | None, hook: str, since: datetime,
                       rule_ids: Iterable[str]) -> list[tuple[str, str | None, tuple[str, ...]]]:
        """Live cards shown on *hook* for this patient and user since *since* (order-select de-duplication)."""
        ...

    def add_snooze(self, *, patient_hash: str, rule_id: str, rule_version: str, kind: str, reason_code: str,
                   indicator: str, evidence: Iterable[str], card_uuid: str, created_at: datetime,
                   until: datetime) -> bool:
        """Hold a rule back for a patient after feedback."""
        ...

    def active_snoozes(self, patient_hash: str, rule_ids: Iterable[str], now: datetime) -> list[Any]:
        """Unexpired snoozes for this patient on these rules."""
        ...

    def prune(self, before: datetime, now: datetime) -> dict[str, int]:
        """Retention: delete decision-log and card-issue rows before *before*, snoozes expired by *now*."""
        ...

    def dispose(self) -> None:
        """Release connections (at shutdown)."""
        ...
