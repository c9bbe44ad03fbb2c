"""The :class:`Store`: feedback, card issue log and JWT replay cache over SQLAlchemy.

SQLite (default, single host) and PostgreSQL (several workers/hosts) behave the same: every write is a
single ``INSERT … ON CONFLICT … RETURNING`` so concurrent processes never race between "check" and
"insert" (RETURNING, because SQLAlchemy 2.1 no longer reports rowcount for INSERT by default).
Time is always passed in by the caller, which keeps the store deterministic under test.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, delete, event, func, make_url, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from ..cdshooks.feedback import FeedbackItem
from .migrate import upgrade
from .protocol import CardIssue
from .schema import Base, CardIssueRow, FeedbackRow, JtiRow

__all__ = ["CardIssue", "Store", "StoredFeedback", "normalise_database_url"]


_PURGE_EVERY = 64


@dataclass(frozen=True, slots=True)
class StoredFeedback:
    """A feedback row as read back (for tests, reports and exports)."""

    service_id: str
    card_uuid: str
    outcome: str
    reason_system: str
    reason_code: str
    reason_display: str | None
    accepted_suggestions: tuple[str, ...]
    outcome_timestamp: datetime
    rule_id: str | None
    rule_version: str | None
    user_comment: str | None = field(default=None, repr=False)


def normalise_database_url(database_url: str) -> URL:
    """Parse *database_url*; plain ``postgresql://``/``postgres://`` use psycopg 3 (the driver we ship)."""
    url = make_url(database_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
    options: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    if memory:
        # One shared connection, otherwise every pooled connection would see its own empty database.
        options["poolclass"] = StaticPool
    elif not url.query.get("uri"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **options)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def _jti_key(issuer: str, jti: str) -> str:
    """Fixed-size, unambiguous key for (issuer, jti): length-prefixing prevents "a|b"+"c" == "a"+"b|c"."""
    material = f"{len(issuer)}:{issuer}|{jti}".encode()
    return hashlib.sha256(material).hexdigest()


def _require_aware(**values: datetime) -> None:
    for name, value in values.items():
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware")


class Store:
    """Persistence for the service. One instance per process; thread-safe (SQLAlchemy pools)."""

    def __init__(self, database_url: str) -> None:
        url = normalise_database_url(database_url)
        self.backend = url.get_backend_name()
        if self.backend == "sqlite":
            self.engine = _sqlite_engine(url)
        elif self.backend == "postgresql":
            self.engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
        else:
            raise ValueError(f"unsupported database backend {self.backend!r} (use sqlite or postgresql)")
        self._claims = itertools.count()
        self._create_schema()

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.dispose()

    # -- lifecycle -------------------------------------------------------------------------------

    def _create_schema(self) -> None:
        """Alembic upgrade to the newest revision (adopting a database made by the old create_all)."""
        upgrade(self.engine)

    def ping(self) -> bool:
        """True when the database answers a trivial query (for /health)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    def dispose(self) -> None:
        """Close pooled connections (shutdown, or after fork in a worker)."""
        self.engine.dispose()

    def _insert(self, table: type[Base]) -> postgresql.Insert | sqlite.Insert:
        if self.backend == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    # -- feedback ----------------------------------------------------------------------------------

    def record_feedback(
        self,
        service_id: str,
        item: FeedbackItem,
        *,
        rule_id: str | None = None,
        rule_version: str | None = None,
    ) -> bool:
        """Store one feedback item; False (no error) when the same outcome was already recorded.

        Clients may resend feedback (F3), so the natural key is (card, outcome, override reason,
        accepted suggestions). Without an explicit rule, the card issue log supplies rule and version.
        """
        with self.engine.begin() as conn:
            return self._record_feedback(conn, service_id, item, rule_id, rule_version)

    def record_feedback_items(self, service_id: str, items: Iterable[FeedbackItem]) -> int:
        """Store every item of one feedback call in ONE transaction; returns how many were new.

        All or nothing: if any item cannot be stored, none is, so the client's retry of the whole call
        (after our 503) neither loses nor duplicates an item (re-sent items are no-ops, see above).
        """
        with self.engine.begin() as conn:
            return sum(self._record_feedback(conn, service_id, item, None, None) for item in items)

    def _record_feedback(self, conn: Any, service_id: str, item: FeedbackItem, rule_id: str | None,
                         rule_version: str | None) -> bool:
        reason = item.override_reason.reason if item.override_reason else None
        accepted = ",".join(sorted(set(item.accepted_suggestions)))
        if rule_id is None and rule_version is None:
            issued = conn.execute(
                select(CardIssueRow.rule_id, CardIssueRow.rule_version).where(
                    CardIssueRow.card_uuid == item.card
                )
            ).first()
            if issued is not None:
                rule_id, rule_version = issued
        stmt = (
            self._insert(FeedbackRow)
            .values(
                service_id=service_id,
                card_uuid=item.card,
                outcome=item.outcome,
                reason_system=item.reason_system,
                reason_code=item.reason_code,
                reason_display=reason.display if reason else None,
                accepted_suggestions=accepted,
                user_comment=item.user_comment,
                outcome_timestamp=item.outcome_timestamp,
                rule_id=rule_id,
                rule_version=rule_version,
            )
            .on_conflict_do_nothing(
                index_elements=[
                    FeedbackRow.card_uuid,
                    FeedbackRow.outcome,
                    FeedbackRow.reason_system,
                    FeedbackRow.reason_code,
                    FeedbackRow.accepted_suggestions,
                ]
            )
            .returning(FeedbackRow.id)
        )
        return conn.execute(stmt).first() is not None

    def feedback_count(self, *, service_id: str | None = None, card_uuid: str | None = None) -> int:
        """Number of stored feedback rows, optionally for one service or card."""
        query = select(func.count()).select_from(FeedbackRow)
        if service_id is not None:
            query = query.where(FeedbackRow.service_id == service_id)
        if card_uuid is not None:
            query = query.where(FeedbackRow.card_uuid == card_uuid)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def feedback_for_card(self, card_uuid: str) -> list[StoredFeedback]:
        """All feedback rows for one card, oldest insert first."""
        query = select(FeedbackRow).where(FeedbackRow.card_uuid == card_uuid).order_by(FeedbackRow.id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            StoredFeedback(
                service_id=row.service_id,
                card_uuid=row.card_uuid,
                outcome=row.outcome,
                reason_system=row.reason_system,
                reason_code=row.reason_code,
                reason_display=row.reason_display,
                accepted_suggestions=tuple(filter(None, row.accepted_suggestions.split(","))),
                outcome_timestamp=row.outcome_timestamp,
                rule_id=row.rule_id,
                rule_version=row.rule_version,
                user_comment=row.user_comment,
            )
            for row in rows
        ]

    # -- card issue log ----------------------------------------------------------------------------

    def record_cards(
        self, hook_instance: str, service_id: str, cards: Iterable[CardIssue], now: datetime
    ) -> int:
        """Log which rule/version produced each emitted card; returns how many were new.

        Re-logging a card uuid is a no-op, so a retried response cannot fail or duplicate.
        """
        _require_aware(now=now)
        rows = [
            {
                "card_uuid": card_uuid,
                "hook_instance": hook_instance,
                "service_id": service_id,
                "rule_id": rule_id,
                "rule_version": rule_version,
                "indicator": indicator,
                "issued_at": now,
            }
            for card_uuid, rule_id, rule_version, indicator in cards
        ]
        if not rows:
            return 0
        stmt = (
            self._insert(CardIssueRow)
            .values(rows)
            .on_conflict_do_nothing(index_elements=[CardIssueRow.card_uuid])
            .returning(CardIssueRow.card_uuid)
        )
        with self.engine.begin() as conn:
            return len(conn.execute(stmt).all())

    def rule_for_card(self, card_uuid: str) -> tuple[str, str] | None:
        """(rule id, rule version) that produced *card_uuid*, or None if we never issued it."""
        query = select(CardIssueRow.rule_id, CardIssueRow.rule_version).where(
            CardIssueRow.card_uuid == card_uuid
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return (row.rule_id, row.rule_version) if row is not None else None

    def purge_card_issues(self, before: datetime) -> int:
        """Delete card issue entries issued before *before* (retention); returns rows deleted."""
        _require_aware(before=before)
        with self.engine.begin() as conn:
            return max(conn.execute(delete(CardIssueRow).where(CardIssueRow.issued_at < before)).rowcount, 0)

    # -- JWT replay cache --------------------------------------------------------------------------

    def claim_jti(self, issuer: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        """True the first time (issuer, jti) is seen; False while an earlier claim is unexpired.

        One atomic upsert: insert, or take over the row only if its expiry has passed. The database's
        unique key arbitrates between processes. Callers add their exp leeway to *expires_at*.
        """
        _require_aware(expires_at=expires_at, now=now)
        insert = self._insert(JtiRow).values(
            key=_jti_key(issuer, jti), issuer=issuer, jti=jti, expires_at=expires_at
        )
        stmt = insert.on_conflict_do_update(
            index_elements=[JtiRow.key],
            set_={"expires_at": insert.excluded.expires_at},
            where=JtiRow.expires_at <= now,
        ).returning(JtiRow.key)
        with self.engine.begin() as conn:
            claimed = conn.execute(stmt).first() is not None
            if next(self._claims) % _PURGE_EVERY == 0:
                conn.execute(delete(JtiRow).where(JtiRow.expires_at <= now))
        return claimed

    def purge_expired_jtis(self, now: datetime) -> int:
        """Delete replay-cache rows whose expiry has passed; returns rows deleted."""
        _require_aware(now=now)
        with self.engine.begin() as conn:
            return max(conn.execute(delete(JtiRow).where(JtiRow.expires_at <= now)).rowcount, 0)

    def jti_count(self) -> int:
        """Rows currently in the replay cache (tests, metrics)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(JtiRow)).scalar_one())
