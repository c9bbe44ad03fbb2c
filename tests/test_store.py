"""Store tests, run against SQLite (temporary file) and a real PostgreSQL.

PostgreSQL: 127.0.0.1:5432, database ``test``, trust auth, user ``postgres`` then ``root`` (or the URL in
``KBLADDER_TEST_POSTGRES_URL``). Each test gets its own schema (via ``search_path`` in the URL), dropped
afterwards, so parallel runs never collide. An unreachable server FAILS the PostgreSQL tests: CI must
start it, and a silently skipped backend would hide dialect bugs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from cds_service.cdshooks import parse_feedback
from cds_service.cdshooks.feedback_request import FeedbackItem
from cds_service.store import Store, normalise_database_url

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CARD = "9368d37b-283f-44a0-93ea-547cebab93ed"
CARD2 = "1b2c3d4e-5f60-4a1b-8c2d-3e4f5a6b7c8d"
S1 = "e56e1945-20b3-4393-8503-a1a20fd73152"
S2 = "0a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"
ISSUER = "https://sandbox.cds-hooks.org"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    with Store(database_url) as opened:
        yield opened


def _feedback(**item: object) -> FeedbackItem:
    body: dict[str, object] = {"card": CARD, "outcome": "accepted", "acceptedSuggestions": [{"id": S1}],
            "outcomeTimestamp": "2025-03-01T12:05:00Z"}
    body.update(item)
    return parse_feedback({"feedback": [body]})[0]


def _override(code: str | None, comment: str | None = None) -> FeedbackItem:
    reason: dict[str, object] = {}
    if code is not None:
        reason["reason"] = {"system": "http://example.org/override", "code": code, "display": code.title()}
    if comment is not None:
        reason["userComment"] = comment
    return _feedback(outcome="overridden", acceptedSuggestions=None, overrideReason=reason or None)


# -- lifecycle ---------------------------------------------------------------------------------------


def test_ping_and_schema(store: Store) -> None:
    assert store.ping() is True
    assert store.feedback_count() == 0 and store.jti_count() == 0
    assert "password" not in repr(store)


def test_schema_creation_is_repeatable(database_url: str) -> None:
    with Store(database_url) as first, Store(database_url) as second:
        assert first.ping() and second.ping()


def test_sqlite_makes_parent_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "store.db"
    with Store(f"sqlite:///{path}") as opened:
        assert path.exists()
        with opened.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_sqlite_in_memory_shares_one_database_across_threads() -> None:
    with Store("sqlite://") as opened:
        assert opened.claim_jti(ISSUER, "m", T0 + timedelta(minutes=5), T0)
        with ThreadPoolExecutor(max_workers=2) as pool:
            assert pool.submit(opened.jti_count).result() == 1


def test_url_normalisation() -> None:
    assert normalise_database_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_database_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_database_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_database_url("sqlite:///x.db").drivername == "sqlite"
    with pytest.raises(ValueError, match="unsupported"):
        Store("mysql://u@h/db")


def test_plain_postgresql_scheme_is_accepted(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with Store(plain) as opened:
        assert opened.engine.url.drivername == "postgresql+psycopg"
        assert opened.ping()


def test_ping_false_when_database_unreachable(store: Store) -> None:
    store.dispose()
    store.engine = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1}
    )
    assert store.ping() is False


# -- feedback ----------------------------------------------------------------------------------------


def test_same_feedback_twice_is_one_row(store: Store) -> None:
    item = _feedback()
    assert store.record_feedback("kbladder", item) is True
    assert store.record_feedback("kbladder", item) is False
    assert store.record_feedback("kbladder", _feedback(outcomeTimestamp="2025-03-01T12:09:00Z")) is False
    assert store.feedback_count() == 1


def test_accepted_suggestion_order_does_not_matter(store: Store) -> None:
    assert store.record_feedback("kbladder", _feedback(acceptedSuggestions=[{"id": S1}, {"id": S2}]))
    assert not store.record_feedback("kbladder", _feedback(acceptedSuggestions=[{"id": S2}, {"id": S1}]))
    repeated = [{"id": S2}, {"id": S1}, {"id": S1}]
    assert not store.record_feedback("kbladder", _feedback(acceptedSuggestions=repeated))
    assert store.feedback_for_card(CARD)[0].accepted_suggestions == tuple(sorted((S1, S2)))


def test_distinct_outcomes_are_distinct_rows(store: Store) -> None:
    assert store.record_feedback("kbladder", _feedback())
    assert store.record_feedback("kbladder", _feedback(acceptedSuggestions=[{"id": S2}]))
    assert store.record_feedback("kbladder", _override(None, "comment only"))
    assert not store.record_feedback("kbladder", _override(None, "different comment, same key"))
    assert store.record_feedback("kbladder", _override("not-relevant"))
    assert store.record_feedback("kbladder", _override("patient-declined"))
    assert store.record_feedback("kbladder", _feedback(card=CARD2))
    assert store.feedback_count() == 6
    assert store.feedback_count(card_uuid=CARD) == 5
    assert store.feedback_count(service_id="other") == 0


def test_feedback_row_contents(store: Store) -> None:
    comment = "Patient already under urology follow-up"
    assert store.record_feedback("kbladder", _override("not-relevant", comment), rule_id="r9", rule_version="2")
    (row,) = store.feedback_for_card(CARD)
    assert row.outcome == "overridden"
    assert (row.reason_system, row.reason_code, row.reason_display) == (
        "http://example.org/override", "not-relevant", "Not-Relevant"
    )
    assert row.user_comment == comment and comment not in repr(row)
    assert row.accepted_suggestions == ()
    assert row.outcome_timestamp == datetime(2025, 3, 1, 12, 5, tzinfo=UTC)
    assert (row.rule_id, row.rule_version, row.service_id) == ("r9", "2", "kbladder")


def test_feedback_joins_rule_from_card_log(store: Store) -> None:
    assert store.record_cards("hook-1", "kbladder", [(CARD, "ketamine-uropathy", "1.2.0", "warning")], T0) == 1
    assert store.record_feedback("kbladder", _feedback())
    assert store.record_feedback("kbladder", _override("x"), rule_id="explicit", rule_version="9")
    rows = store.feedback_for_card(CARD)
    assert [(r.rule_id, r.rule_version) for r in rows] == [("ketamine-uropathy", "1.2.0"), ("explicit", "9")]
    assert store.record_feedback("kbladder", _feedback(card=CARD2))
    assert store.feedback_for_card(CARD2)[0].rule_id is None


# -- card issue log ----------------------------------------------------------------------------------


def test_card_issue_log(store: Store) -> None:
    cards = [(CARD, "r1", "1.0", "warning"), (CARD2, "r2", "3.1", "critical")]
    assert store.record_cards("hook-1", "kbladder", cards, T0) == 2
    assert store.record_cards("hook-1", "kbladder", cards, T0) == 0
    assert store.record_cards("hook-1", "kbladder", [], T0) == 0
    assert store.rule_for_card(CARD) == ("r1", "1.0")
    assert store.rule_for_card(CARD2) == ("r2", "3.1")
    assert store.rule_for_card("00000000-0000-0000-0000-000000000000") is None
    assert store.purge_card_issues(T0) == 0
    assert store.purge_card_issues(T0 + timedelta(seconds=1)) == 2
    assert store.rule_for_card(CARD) is None


# -- JWT replay cache --------------------------------------------------------------------------------


def test_jti_claimed_once_until_expiry(store: Store) -> None:
    exp = T0 + timedelta(minutes=5)
    assert store.claim_jti(ISSUER, "jti-1", exp, T0) is True
    assert store.claim_jti(ISSUER, "jti-1", exp, T0 + timedelta(seconds=1)) is False
    assert store.claim_jti(ISSUER, "jti-1", exp, exp - timedelta(microseconds=1)) is False
    assert store.claim_jti("https://other.example.org", "jti-1", exp, T0) is True
    assert store.claim_jti(ISSUER, "jti-2", exp, T0) is True
    # After expires_at the same jti may be claimed again, and is then protected again.
    later = exp + timedelta(minutes=5)
    assert store.claim_jti(ISSUER, "jti-1", exp, exp) is True
    assert store.claim_jti(ISSUER, "jti-1", later, exp + timedelta(seconds=1)) is True
    assert store.claim_jti(ISSUER, "jti-1", later, exp + timedelta(seconds=2)) is False


def test_jti_key_is_unambiguous_and_handles_long_values(store: Store) -> None:
    exp = T0 + timedelta(minutes=5)
    assert store.claim_jti("a|b", "c", exp, T0)
    assert store.claim_jti("a", "b|c", exp, T0)
    huge = "x" * 20_000
    assert store.claim_jti(huge, huge, exp, T0)
    assert not store.claim_jti(huge, huge, exp, T0)


def test_expired_jtis_are_purged_opportunistically(database_url: str) -> None:
    with Store(database_url) as first:
        first.claim_jti(ISSUER, "old", T0 + timedelta(minutes=1), T0)
        assert first.jti_count() == 1
    with Store(database_url) as second:  # a fresh instance purges on its first claim
        assert second.claim_jti(ISSUER, "new", T0 + timedelta(minutes=20), T0 + timedelta(minutes=10))
        assert second.jti_count() == 1
        assert second.purge_expired_jtis(T0 + timedelta(minutes=30)) == 1
        assert second.jti_count() == 0


def test_jti_concurrent_claims_have_one_winner(store: Store) -> None:
    exp = T0 + timedelta(minutes=5)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: store.claim_jti(ISSUER, "race", exp, T0), range(16)))
    assert results.count(True) == 1


_CHILD = textwrap.dedent(
    """
    import sys
    from datetime import datetime
    from cds_service.store import Store

    url, issuer, jti, expires_at, now = sys.argv[1:]
    with Store(url) as store:
        claimed = store.claim_jti(
            issuer, jti, datetime.fromisoformat(expires_at), datetime.fromisoformat(now)
        )
    print("claimed" if claimed else "replay")
    """
)


def _claim_in_subprocess(url: str, jti: str, expires_at: datetime, now: datetime) -> str:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, url, ISSUER, jti, expires_at.isoformat(), now.isoformat()],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_jti_replay_is_detected_across_processes(store: Store, database_url: str) -> None:
    exp = T0 + timedelta(minutes=5)
    assert store.claim_jti(ISSUER, "cross-process", exp, T0) is True
    assert _claim_in_subprocess(database_url, "cross-process", exp, T0 + timedelta(seconds=10)) == "replay"
    # Once expired, another process may claim it again (new token lifetime) and the parent sees that.
    renewed = exp + timedelta(minutes=5)
    assert _claim_in_subprocess(database_url, "cross-process", renewed, exp + timedelta(seconds=1)) == "claimed"
    assert store.claim_jti(ISSUER, "cross-process", renewed, exp + timedelta(seconds=2)) is False


def test_naive_datetimes_are_refused(store: Store) -> None:
    naive = datetime(2025, 3, 1, 12, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.claim_jti(ISSUER, "j", naive, T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.claim_jti(ISSUER, "j", T0, naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.record_cards("h", "s", [(CARD, "r", "1", "info")], naive)


def test_non_utc_offsets_compare_as_instants(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    exp = (T0 + timedelta(minutes=5)).astimezone(plus_two)
    assert store.claim_jti(ISSUER, "tz", exp, T0.astimezone(plus_two))
    assert not store.claim_jti(ISSUER, "tz", exp, T0 + timedelta(minutes=4))
    assert store.claim_jti(ISSUER, "tz", exp, T0 + timedelta(minutes=5))
