"""Alembic migrations on SQLite and PostgreSQL: a database made by the pre-migration ``create_all`` is
adopted and upgraded without losing a row; a fresh one is built by the migrations alone; the ORM models and
the migrations describe the same schema; the migration scripts ship inside the installed package."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from cds_service.store import Store, normalise_database_url
from cds_service.store.migrate import BASELINE, MIGRATIONS, current_revision, head_revision, upgrade
from cds_service.store.schema import Base

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CARD = "9368d37b-283f-44a0-93ea-547cebab93ed"

# The DDL ``Base.metadata.create_all`` emitted before migrations existed (schema of commit b29ff2f),
# per dialect, so the test starts from exactly what deployed databases hold.
_LEGACY_TYPES = {"sqlite": ("INTEGER", "DATETIME", '"key"'),
                 "postgresql": ("BIGSERIAL", "TIMESTAMP WITH TIME ZONE", "key")}
_LEGACY_DDL = """
CREATE TABLE card_issue (card_uuid VARCHAR NOT NULL, hook_instance VARCHAR NOT NULL, service_id VARCHAR NOT NULL,
  rule_id VARCHAR NOT NULL, rule_version VARCHAR NOT NULL, indicator VARCHAR NOT NULL, issued_at {ts} NOT NULL,
  PRIMARY KEY (card_uuid));
CREATE INDEX ix_card_issue_hook_instance ON card_issue (hook_instance);
CREATE INDEX ix_card_issue_issued_at ON card_issue (issued_at);
CREATE TABLE feedback (id {id} NOT NULL, service_id VARCHAR NOT NULL, card_uuid VARCHAR NOT NULL,
  outcome VARCHAR NOT NULL, reason_system VARCHAR NOT NULL, reason_code VARCHAR NOT NULL, reason_display VARCHAR,
  accepted_suggestions TEXT NOT NULL, user_comment TEXT, outcome_timestamp {ts} NOT NULL, rule_id VARCHAR,
  rule_version VARCHAR, PRIMARY KEY (id),
  CONSTRAINT uq_feedback_natural_key UNIQUE (card_uuid, outcome, reason_system, reason_code, accepted_suggestions));
CREATE TABLE jwt_replay ({key} VARCHAR(64) NOT NULL, issuer TEXT NOT NULL, jti TEXT NOT NULL,
  expires_at {ts} NOT NULL, PRIMARY KEY ({key}));
CREATE INDEX ix_jwt_replay_expires_at ON jwt_replay (expires_at);
"""


def _legacy_database(url: str) -> None:
    """Create the old schema and fill it with rows, as a deployed service would have."""
    engine = create_engine(normalise_database_url(url))
    if engine.dialect.name == "sqlite":
        Path(engine.url.database or "").parent.mkdir(parents=True, exist_ok=True)
    id_type, ts, key = _LEGACY_TYPES[engine.dialect.name]
    stamp = "2025-03-01 12:00:00" if engine.dialect.name == "sqlite" else "2025-03-01 12:00:00+00"
    with engine.begin() as conn:
        for statement in _LEGACY_DDL.format(id=id_type, ts=ts, key=key).split(";"):
            if statement.strip():
                conn.execute(text(statement))
        conn.execute(text(
            "INSERT INTO card_issue VALUES (:c, 'hi-1', 'kbladder-order-sign', 'KB-02', '1.0.0', 'warning', :t)"),
            {"c": CARD, "t": stamp})
        conn.execute(text(
            "INSERT INTO feedback (service_id, card_uuid, outcome, reason_system, reason_code, reason_display,"
            " accepted_suggestions, user_comment, outcome_timestamp, rule_id, rule_version) VALUES"
            " ('kbladder-order-sign', :c, 'overridden', 'http://x', 'not-relevant', 'Not relevant', '',"
            " 'kept', :t, 'KB-02', '1.0.0')"), {"c": CARD, "t": stamp})
        conn.execute(text(f"INSERT INTO jwt_replay ({key}, issuer, jti, expires_at) VALUES ('k1', 'iss', 'j1', :t)"),
                     {"t": stamp})
    engine.dispose()


def test_legacy_database_is_adopted_without_losing_a_row(database_url: str) -> None:
    _legacy_database(database_url)
    with Store(database_url) as store:
        assert current_revision(store.engine) == head_revision()
        assert store.rule_for_card(CARD) == ("KB-02", "1.0.0")
        (row,) = store.feedback_for_card(CARD)
        assert (row.reason_code, row.user_comment, row.outcome_timestamp) == ("not-relevant", "kept", T0)
        assert store.jti_count() == 1
        # the new tables exist and work on the adopted database
        tables = set(inspect(store.engine).get_table_names())
        assert {"decision_log", "snooze", "alembic_version"} <= tables
        assert store.claim_jti("iss", "j2", T0 + timedelta(minutes=5), T0)
    with Store(database_url) as again:  # a second start is a no-op
        assert again.feedback_count() == 1 and again.rule_for_card(CARD) is not None


def test_fresh_database_matches_the_models(database_url: str) -> None:
    with Store(database_url) as store, store.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_upgrade_step_by_step_keeps_rows(database_url: str) -> None:
    engine = create_engine(normalise_database_url(database_url))
    if engine.dialect.name == "sqlite":
        Path(engine.url.database or "").parent.mkdir(parents=True, exist_ok=True)
    upgrade(engine, BASELINE)
    assert current_revision(engine) == BASELINE
    assert "decision_log" not in inspect(engine).get_table_names()
    engine.dispose()
    with Store(database_url) as store:
        assert store.record_cards("hi", "svc", [(CARD, "KB-01", "1", "info")], T0) == 1
    with Store(database_url) as store:
        assert store.rule_for_card(CARD) == ("KB-01", "1")


def test_migrations_ship_in_the_package() -> None:
    files = {p.name for p in (MIGRATIONS / "versions").glob("*.py")}
    assert {"0001_baseline.py", "0002_decision_log.py"} <= files
    assert (MIGRATIONS / "env.py").is_file()
