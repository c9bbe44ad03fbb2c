"""Tables of the store (SQLAlchemy 2.0 declarative), identical on SQLite and PostgreSQL.

Uniqueness lives in the database (unique constraints / primary keys), not in process memory, so
idempotent feedback and JWT replay protection hold across gunicorn workers and hosts.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Dialect, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = ["Base", "CardIssueRow", "DecisionRow", "FeedbackRow", "JtiRow", "SnoozeRow", "UTCDateTime"]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every dialect.

    SQLite has no timestamp type: SQLAlchemy stores a fixed-format text and drops tzinfo, so values are
    normalised to UTC before storage (which also keeps text comparison == time comparison) and naive
    datetimes are refused rather than silently misread as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: pass a timezone-aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base owning the store's metadata."""


_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements only INTEGER PRIMARY KEY


class FeedbackRow(Base):
    """One feedback outcome for one card. Key columns are NOT NULL with "" defaults because NULLs
    never collide in a unique constraint (both dialects), which would defeat idempotency."""

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint(
            "card_uuid", "outcome", "reason_system", "reason_code", "accepted_suggestions",
            name="uq_feedback_natural_key",
        ),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    service_id: Mapped[str] = mapped_column(String)
    card_uuid: Mapped[str] = mapped_column(String)
    outcome: Mapped[str] = mapped_column(String)
    reason_system: Mapped[str] = mapped_column(String, default="")
    reason_code: Mapped[str] = mapped_column(String, default="")
    reason_display: Mapped[str | None] = mapped_column(String)
    #: Sorted, de-duplicated suggestion UUIDs joined by "," ("" when none).
    accepted_suggestions: Mapped[str] = mapped_column(Text, default="")
    #: Clinician's free text from overrideReason.userComment: stored, never logged.
    user_comment: Mapped[str | None] = mapped_column(Text)
    outcome_timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    rule_id: Mapped[str | None] = mapped_column(String)
    rule_version: Mapped[str | None] = mapped_column(String)


class CardIssueRow(Base):
    """Which rule (and version) produced a card, so feedback can be attributed later."""

    __tablename__ = "card_issue"
    __table_args__ = (
        Index("ix_card_issue_hook_instance", "hook_instance"),
        Index("ix_card_issue_issued_at", "issued_at"),
    )

    card_uuid: Mapped[str] = mapped_column(String, primary_key=True)
    hook_instance: Mapped[str] = mapped_column(String)
    service_id: Mapped[str] = mapped_column(String)
    rule_id: Mapped[str] = mapped_column(String)
    rule_version: Mapped[str] = mapped_column(String)
    indicator: Mapped[str] = mapped_column(String)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JtiRow(Base):
    """A JWT ``jti`` seen from an issuer, kept until the token expires (checklist J6).

    The primary key is a SHA-256 of (issuer, jti) so that arbitrarily long claims can never exceed an
    index size limit; issuer and jti are kept in clear for operators.
    """

    __tablename__ = "jwt_replay"
    __table_args__ = (Index("ix_jwt_replay_expires_at", "expires_at"),)

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    issuer: Mapped[str] = mapped_column(Text)
    jti: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DecisionRow(Base):
    """What one rule decided on one hook call (the decision log). PHI-free by construction: the patient,
    the user, the drafts and the evidence appear only as keyed hashes (HMAC under the log key)."""

    __tablename__ = "decision_log"
    __table_args__ = (
        Index("ix_decision_log_logged_at", "logged_at"),
        Index("ix_decision_log_rule", "rule_id", "logged_at"),
        Index("ix_decision_log_patient_rule", "patient_hash", "rule_id"),
        Index("ix_decision_log_card_uuid", "card_uuid"),
        Index("ix_decision_log_hook_instance", "hook_instance"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    logged_at: Mapped[datetime] = mapped_column(UTCDateTime)
    service_id: Mapped[str] = mapped_column(String)
    hook: Mapped[str] = mapped_column(String)
    hook_instance: Mapped[str] = mapped_column(String)
    #: "live" or "shadow": which rule set decided (a shadow set is evaluated and logged, never shown).
    rule_set: Mapped[str] = mapped_column(String)
    rule_set_version: Mapped[str] = mapped_column(String)
    rule_id: Mapped[str] = mapped_column(String)
    rule_version: Mapped[str] = mapped_column(String)
    #: fired | not_fired | undecided | suppressed | silent
    outcome: Mapped[str] = mapped_column(String)
    indicator: Mapped[str | None] = mapped_column(String)
    card_uuid: Mapped[str | None] = mapped_column(String)
    #: Why suppressed / not decided, in words from the rule set (never patient data).
    detail: Mapped[str | None] = mapped_column(Text)
    #: JSON array of the data that was missing (data keys and reasons).
    missing: Mapped[str | None] = mapped_column(Text)
    issuer: Mapped[str | None] = mapped_column(String)
    tenant: Mapped[str | None] = mapped_column(String)
    patient_hash: Mapped[str] = mapped_column(String(64))
    user_hash: Mapped[str | None] = mapped_column(String(64))
    #: JSON arrays of keyed hashes: the draft orders judged, the evidence a fired rule showed.
    drafts: Mapped[str | None] = mapped_column(Text)
    evidence: Mapped[str | None] = mapped_column(Text)


class SnoozeRow(Base):
    """A rule held back for one patient after feedback: overridden with a reason, or a suggestion accepted.

    ``evidence`` (keyed hashes) and ``indicator`` are what the clinician saw, so new evidence or a rising
    indicator can break the snooze."""

    __tablename__ = "snooze"
    __table_args__ = (
        Index("ix_snooze_patient_rule", "patient_hash", "rule_id"),
        Index("ix_snooze_until", "until"),
        UniqueConstraint("card_uuid", "kind", name="uq_snooze_card_kind"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    patient_hash: Mapped[str] = mapped_column(String(64))
    rule_id: Mapped[str] = mapped_column(String)
    rule_version: Mapped[str] = mapped_column(String)
    #: "overridden" (with reason_code) or "accepted" (a suggestion; held until its result is due)
    kind: Mapped[str] = mapped_column(String)
    reason_code: Mapped[str] = mapped_column(String, default="")
    indicator: Mapped[str] = mapped_column(String)
    evidence: Mapped[str] = mapped_column(Text, default="[]")
    card_uuid: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    until: Mapped[datetime] = mapped_column(UTCDateTime)
