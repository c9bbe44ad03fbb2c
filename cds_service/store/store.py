"""The :class:`Store`: feedback, card issue log and JWT replay cache over SQLAlchemy.

SQLite (default, single host) and PostgreSQL (several workers/hosts) behave the same: every write is a
single ``INSERT … ON CONFLICT … RETURNING`` so concurrent processes never race between "check" and
"insert" (RETURNING, because SQLAlchemy 2.1 no longer reports rowcount for INSERT by default).
Time is always passed in by the caller, which keeps the store deterministic under test.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, delete, event, func, make_url, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from ..cdshooks.feedback_request import FeedbackItem
from .migrate import upgrade
from .protocol import CardIssue
from .schema import Base, CardIssueRow, DecisionRow, FeedbackRow, JtiRow, SnoozeRow

__all__ = ["CardIssue", "IssuedCard", "Snooze", "Store", "StoredFeedback", "normalise_database_url"]


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


@dataclass(frozen=True, slots=True)
class IssuedCard:
    """A card we sent, as feedback needs it: who made it, for which endpoint, about whom (hashed)."""

    card_uuid: str
    service_id: str
    rule_id: str
    rule_version: str
    indicator: str
    issued_at: datetime
    patient_hash: str | None = None
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Snooze:
    """A rule held back for one patient (see schema.SnoozeRow)."""

    rule_id: str
    kind: str
    reason_code: str
    indicator: str
    evidence: frozenset[str]
    until: datetime
    card_uuid: str


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

    def record_feedback_items(self, service_id: str, items: Iterable[FeedbackItem],
                              rules: Sequence[tuple[str, str]] | None = None) -> int:
        """Store every item of one feedback call in ONE transaction; returns how many were new.

        All or nothing: if any item cannot be stored, none is, so the client's retry of the whole call
        (after our 503) neither loses nor duplicates an item (re-sent items are no-ops, see above).
        *rules* gives each item's (rule id, version) when the caller knows it (the card may still be in the
        background writer's queue); otherwise the card issue log supplies it.
        """
        items = list(items)
        attributed = list(rules) if rules is not None else [(None, None)] * len(items)
        with self.engine.begin() as conn:
            return sum(self._record_feedback(conn, service_id, item, rule_id, version)
                       for item, (rule_id, version) in zip(items, attributed, strict=True))

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
        return [self._stored_feedback(row) for row in rows]

    @staticmethod
    def _stored_feedback(row: Any) -> StoredFeedback:
        return StoredFeedback(
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

    # -- decision log (written by the background writer, never on the request path) ----------------

    def write_calls(self, calls: Iterable[Any]) -> int:
        """Write many hook calls' logs (governance.decisionlog.CallLog) in ONE transaction; returns rows.

        Card issue rows are idempotent on the card uuid; decision rows are appended.
        """
        decisions: list[dict[str, Any]] = []
        issues: list[dict[str, Any]] = []
        for call in calls:
            info = call.call
            decisions.extend(entry.row(info) for entry in call.entries)
            issues.extend(
                {"card_uuid": uuid, "hook_instance": info.hook_instance, "service_id": info.service_id,
                 "rule_id": rule_id, "rule_version": version, "indicator": indicator, "issued_at": info.now}
                for uuid, rule_id, version, indicator in call.cards
            )
        with self.engine.begin() as conn:
            if issues:
                conn.execute(self._insert(CardIssueRow).values(issues)
                             .on_conflict_do_nothing(index_elements=[CardIssueRow.card_uuid]))
            if decisions:
                conn.execute(DecisionRow.__table__.insert(), decisions)
        return len(decisions) + len(issues)

    def issued_card(self, card_uuid: str) -> IssuedCard | None:
        """The card we issued under *card_uuid* (with its decision-log hashes when logged), or None."""
        query = (
            select(CardIssueRow.card_uuid, CardIssueRow.service_id, CardIssueRow.rule_id, CardIssueRow.rule_version,
                   CardIssueRow.indicator, CardIssueRow.issued_at, DecisionRow.patient_hash, DecisionRow.evidence)
            .outerjoin(DecisionRow, (DecisionRow.card_uuid == CardIssueRow.card_uuid)
                       & (DecisionRow.rule_set == "live"))
            .where(CardIssueRow.card_uuid == card_uuid)
            .limit(1)
        )
        with self.engine.connect() as conn:
            found = conn.execute(query).first()
        if found is None:
            return None
        *issued, evidence = found
        return IssuedCard(*issued, tuple(json.loads(evidence)) if evidence else ())

    def decision_count(self, **where: str) -> int:
        """Decision-log rows matching column == value filters (tests, metrics)."""
        query = select(func.count()).select_from(DecisionRow)
        for column, value in where.items():
            query = query.where(getattr(DecisionRow, column) == value)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def decisions(self, *, since: datetime | None = None, until: datetime | None = None,
                  rule_id: str | None = None, batch: int = 2000) -> Iterator[Any]:
        """Decision-log rows in time order, streamed (the report reads millions without holding them)."""
        query = select(DecisionRow).order_by(DecisionRow.logged_at, DecisionRow.id)
        query = self._period(query, DecisionRow.logged_at, since, until)
        if rule_id is not None:
            query = query.where(DecisionRow.rule_id == rule_id)
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=batch).execute(query)
            yield from result

    def count_decisions(self, *, since: datetime | None = None, until: datetime | None = None,
                        rule_id: str | None = None) -> int:
        query = self._period(select(func.count()).select_from(DecisionRow), DecisionRow.logged_at, since, until)
        if rule_id is not None:
            query = query.where(DecisionRow.rule_id == rule_id)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def feedback_rows(self, *, since: datetime | None = None, until: datetime | None = None) -> list[StoredFeedback]:
        """Feedback in a period (by outcome time), oldest first."""
        query = self._period(select(FeedbackRow).order_by(FeedbackRow.outcome_timestamp, FeedbackRow.id),
                             FeedbackRow.outcome_timestamp, since, until)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [self._stored_feedback(row) for row in rows]

    @staticmethod
    def _period(query: Any, column: Any, since: datetime | None, until: datetime | None) -> Any:
        if since is not None:
            _require_aware(since=since)
            query = query.where(column >= since)
        if until is not None:
            _require_aware(until=until)
            query = query.where(column < until)
        return query

    def shown_recently(self, *, patient_hash: str, user_hash: str | None, hook: str, since: datetime,
                       rule_ids: Iterable[str]) -> list[tuple[str, str | None, tuple[str, ...]]]:
        """(rule id, indicator, draft hashes) of live cards shown on *hook* for this patient+user since *since*."""
        ids = list(rule_ids)
        if not ids:
            return []
        query = select(DecisionRow.rule_id, DecisionRow.indicator, DecisionRow.drafts).where(
            DecisionRow.patient_hash == patient_hash, DecisionRow.rule_id.in_(ids), DecisionRow.hook == hook,
            DecisionRow.outcome == "fired", DecisionRow.rule_set == "live", DecisionRow.logged_at >= since,
            DecisionRow.card_uuid.is_not(None),
        )
        query = query.where(DecisionRow.user_hash == user_hash if user_hash else DecisionRow.user_hash.is_(None))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [(r.rule_id, r.indicator, tuple(json.loads(r.drafts)) if r.drafts else ()) for r in rows]

    # -- snoozes -----------------------------------------------------------------------------------

    def add_snooze(self, *, patient_hash: str, rule_id: str, rule_version: str, kind: str, reason_code: str,
                   indicator: str, evidence: Iterable[str], card_uuid: str, created_at: datetime,
                   until: datetime) -> bool:
        """Hold *rule_id* back for this patient until *until*; idempotent per (card, kind)."""
        _require_aware(created_at=created_at, until=until)
        stmt = (
            self._insert(SnoozeRow)
            .values(patient_hash=patient_hash, rule_id=rule_id, rule_version=rule_version, kind=kind,
                    reason_code=reason_code, indicator=indicator, evidence=json.dumps(sorted(set(evidence))),
                    card_uuid=card_uuid, created_at=created_at, until=until)
            .on_conflict_do_nothing(index_elements=[SnoozeRow.card_uuid, SnoozeRow.kind])
            .returning(SnoozeRow.id)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).first() is not None

    def active_snoozes(self, patient_hash: str, rule_ids: Iterable[str], now: datetime) -> list[Snooze]:
        """Unexpired snoozes for this patient on these rules."""
        _require_aware(now=now)
        ids = list(rule_ids)
        if not ids:
            return []
        query = select(SnoozeRow).where(SnoozeRow.patient_hash == patient_hash, SnoozeRow.rule_id.in_(ids),
                                        SnoozeRow.until > now)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [Snooze(r.rule_id, r.kind, r.reason_code, r.indicator, frozenset(json.loads(r.evidence or "[]")),
                       r.until, r.card_uuid) for r in rows]

    # -- retention -----------------------------------------------------------------------------------

    def prune(self, before: datetime, now: datetime) -> dict[str, int]:
        """Delete decision-log and card-issue rows older than *before* and snoozes expired by *now*."""
        _require_aware(before=before, now=now)
        with self.engine.begin() as conn:
            return {
                "decisions": max(conn.execute(delete(DecisionRow).where(DecisionRow.logged_at < before)).rowcount, 0),
                "cards": max(conn.execute(delete(CardIssueRow).where(CardIssueRow.issued_at < before)).rowcount, 0),
                "snoozes": max(conn.execute(delete(SnoozeRow).where(SnoozeRow.until <= now)).rowcount, 0),
            }
