"""Governance over real HTTP on SQLite and PostgreSQL: the decision log, silent rules, snoozes learnt from
feedback, order-select -> order-sign de-duplication, shadow rule sets, retention; plus the background
writer and the pure suppression decision on their own."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from hookdata import KETAMINE, dipstick, draft_order, gross_hematuria, ketamine_given, prefetch, request_body, serving
from sqlalchemy import select

from cds_service.app import create_app
from cds_service.config import Settings
from cds_service.governance.service import Governance
from cds_service.governance.suppress import Fired, ShownBefore, SnoozeView, hold_back
from cds_service.governance.writer import BackgroundWriter
from cds_service.http.state import EXTENSION
from cds_service.rules_state import RulesState
from cds_service.store import Store
from cds_service.store.schema import DecisionRow

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
PV, OSEL, OSIGN = "kbladder-patient-view", "kbladder-order-select", "kbladder-order-sign"
PID = "patient-secret-4711"
USER = "Practitioner/dr-secret-42"


@dataclass
class Svc:
    url: str
    store: Store
    governance: Governance

    def call(self, service_id: str, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(f"{self.url}/cds-services/{service_id}", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def feedback(self, service_id: str, *items: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.url}/cds-services/{service_id}/feedback", json={"feedback": list(items)},
                             timeout=30)

    def rows(self, **where: str) -> list[Any]:
        self.governance.flush()
        query = select(DecisionRow.__table__)
        for column, value in where.items():
            query = query.where(getattr(DecisionRow, column) == value)
        with self.store.engine.connect() as conn:
            return list(conn.execute(query.order_by(DecisionRow.id)))


@contextmanager
def running(database_url: str, *, rules: Path = RULES, site: Path | None = None, **settings: Any) -> Iterator[Svc]:
    store = Store(database_url)
    state = RulesState([rules], site=site, reload_interval_s=0)
    config = Settings(database_url=database_url, reload_interval_s=0, log_hash_key="test-log-key", **settings)
    app = create_app(config, rules_state=state, store=store)
    governance = app.extensions[EXTENSION].governance
    try:
        with serving(app) as url:
            yield Svc(url, store, governance)
    finally:
        governance.close()
        store.dispose()


def kb02_cards(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in body["cards"] if c["source"]["topic"]["code"] == "KB-02"]


def pv_body(*extra: dict[str, Any]) -> dict[str, Any]:
    body = request_body(pid=PID, prefetch=prefetch(ketamine_given(PID, days=-3), dipstick(PID, days=-1), *extra,
                                                  pid=PID))
    body["context"]["userId"] = USER
    return body


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# -- decision log ----------------------------------------------------------------------------------------


def test_every_rule_is_logged_for_every_call_without_phi(database_url: str) -> None:
    with running(database_url) as svc:
        body = pv_body()
        answer = svc.call(PV, body)
        (card,) = kb02_cards(answer)
        rows = svc.rows(hook_instance=body["hookInstance"])
        state = RulesState([RULES], reload_interval_s=0)
        expected = {r.id for r in state.ruleset.rules if "patient-view" in r.hooks and r.status != "retired"}
        assert {r.rule_id for r in rows} == expected and len(rows) == len(expected)
        kb02 = next(r for r in rows if r.rule_id == "KB-02")
        assert (kb02.outcome, kb02.indicator, kb02.card_uuid) == ("fired", card["indicator"], card["uuid"])
        assert kb02.rule_version == card["extension"]["org.kbladder-cds.rule"]["version"]
        assert {r.rule_set for r in rows} == {"live"} and {r.rule_set_version for r in rows} == {state.ruleset.version}
        assert {r.outcome for r in rows} <= {"fired", "not_fired", "undecided", "suppressed", "silent"}
        dumped = json.dumps([list(map(str, r)) for r in rows])
        assert PID not in dumped and "dr-secret" not in dumped and "ma1" not in dumped
        assert len({r.patient_hash for r in rows}) == 1 and rows[0].user_hash
        assert svc.store.rule_for_card(card["uuid"]) == ("KB-02", kb02.rule_version)  # card issue log too


def test_checks_incomplete_card_is_logged_and_its_feedback_attributed(database_url: str) -> None:
    """The card no rule leads is still a card clinicians saw: logged under its topic, feedback accepted."""
    bad = {**dipstick(PID, rid="bad"), "effectiveDateTime": "not-a-date"}
    body = request_body(pid=PID, prefetch=prefetch(ketamine_given(PID), ketamine_given(PID, days=-3, rid="ma2"),
                                                  dipstick(PID), bad, pid=PID))
    with running(database_url) as svc:
        (card,) = svc.call(PV, body)["cards"]
        assert card["source"]["topic"]["code"] == "checks-incomplete"
        row = next(r for r in svc.rows(hook_instance=body["hookInstance"]) if r.card_uuid == card["uuid"])
        assert (row.rule_id, row.outcome, row.indicator) == ("checks-incomplete", "fired", "info")
        assert row.rule_version == row.rule_set_version and "KB-02" in row.detail
        sent = svc.feedback(PV, {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": now_iso()})
        assert sent.status_code == 200, sent.text
        assert svc.store.feedback_count(card_uuid=card["uuid"]) == 1


def test_feedback_sent_while_its_card_is_being_written_is_found(database_url: str) -> None:
    """The card leaves the writer's queue between two looks: the queue is read first, then the store."""
    with running(database_url) as svc:
        (card,) = kb02_cards(svc.call(PV, pv_body()))
        real = svc.store.issued_card

        def store_then_flush(uuid: str) -> Any:
            found = real(uuid)  # not written yet ...
            svc.governance.flush()  # ... and now it is, and gone from the queue
            return found

        svc.store.issued_card = store_then_flush  # type: ignore[method-assign]
        try:
            assert svc.governance.issued_card(card["uuid"]) is not None
        finally:
            svc.store.issued_card = real  # type: ignore[method-assign]


def test_silent_rule_is_evaluated_and_logged_never_shown(database_url: str, tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("rules:\n  KB-02:\n    status: silent\n")
    with running(database_url, site=site) as svc:
        body = pv_body()
        assert kb02_cards(svc.call(PV, body)) == []
        (row,) = svc.rows(hook_instance=body["hookInstance"], rule_id="KB-02")
        assert row.outcome == "silent" and row.indicator in ("info", "warning", "critical") and row.card_uuid is None


def test_undecided_rules_log_what_was_missing(database_url: str) -> None:
    with running(database_url) as svc:
        bad = {**dipstick(PID, rid="bad"), "effectiveDateTime": "not-a-date"}  # skipped: Observations incomplete
        body = request_body(pid=PID, prefetch=prefetch(ketamine_given(PID, days=-3), bad, pid=PID))
        svc.call(PV, body)
        undecided = svc.rows(hook_instance=body["hookInstance"], outcome="undecided")
        assert undecided and all(json.loads(r.missing) for r in undecided)


# -- feedback truth and snoozes ------------------------------------------------------------------------------


def test_override_snoozes_the_rule_until_new_evidence(database_url: str) -> None:
    with running(database_url) as svc:
        (card,) = kb02_cards(svc.call(PV, pv_body()))
        unknown = svc.feedback(PV, {"card": "8d1c1f43-0a51-4a39-9b0e-2b5b6c9c1d11", "outcome": "overridden",
                                    "outcomeTimestamp": now_iso()})
        assert unknown.status_code == 404 and "feedback[0].card" in unknown.text
        reason = {"reason": {"code": "already-investigated"}}  # code only, as the sandbox sends it
        item = {"card": card["uuid"], "outcome": "overridden", "overrideReason": reason,
                "outcomeTimestamp": now_iso()}
        assert svc.feedback(PV, item).status_code == 200
        (stored,) = svc.store.feedback_for_card(card["uuid"])
        assert stored.rule_id == "KB-02" and stored.reason_display == next(
            r["display"] for r in card["overrideReasons"] if r["code"] == "already-investigated")

        again = pv_body()
        assert kb02_cards(svc.call(PV, again)) == []
        (held,) = svc.rows(hook_instance=again["hookInstance"], rule_id="KB-02")
        assert held.outcome == "suppressed" and "already-investigated" in held.detail and held.card_uuid is None

        news = pv_body(dipstick(PID, value="2+", days=-0.5, rid="o-new"))  # a finding they have not seen
        assert len(kb02_cards(svc.call(PV, news))) == 1


def test_accepted_suggestion_holds_the_card_until_the_result_is_due(database_url: str) -> None:
    with running(database_url) as svc:
        (card,) = kb02_cards(svc.call(PV, pv_body()))
        chosen = card["suggestions"][0]["uuid"]
        item = {"card": card["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": chosen}],
                "outcomeTimestamp": now_iso()}
        assert svc.feedback(PV, item).status_code == 200
        again = pv_body()
        assert kb02_cards(svc.call(PV, again)) == []
        (held,) = svc.rows(hook_instance=again["hookInstance"], rule_id="KB-02")
        assert held.outcome == "suppressed" and "result is due" in held.detail


def test_order_select_card_is_not_repeated_at_order_sign(database_url: str) -> None:
    drafts = [draft_order("ket", KETAMINE, pid=PID)]
    history = prefetch(ketamine_given(PID, days=-7), dipstick(PID), gross_hematuria(PID), pid=PID)

    def order(hook: str, user: str = USER) -> dict[str, Any]:
        body = request_body(hook, pid=PID, drafts=drafts, selections=["MedicationRequest/ket"], prefetch=history)
        body["context"]["userId"] = user
        return body

    with running(database_url) as svc:
        assert kb02_cards(svc.call(OSEL, order("order-select")))
        sign = order("order-sign")
        assert kb02_cards(svc.call(OSIGN, sign)) == []
        (held,) = svc.rows(hook_instance=sign["hookInstance"], rule_id="KB-02")
        assert held.outcome == "suppressed" and "order-select" in held.detail
        assert kb02_cards(svc.call(OSIGN, order("order-sign", user="Practitioner/someone-else")))
    with running(database_url, order_dedupe_window_s=0) as svc:  # the window is configurable (0: off)
        svc.call(OSEL, order("order-select"))
        assert kb02_cards(svc.call(OSIGN, order("order-sign")))


# -- shadow rule set -------------------------------------------------------------------------------------------


def test_shadow_rule_set_is_logged_under_its_own_version_and_never_shown(database_url: str, tmp_path: Path) -> None:
    candidate = tmp_path / "candidate"
    shutil.copytree(RULES, candidate, ignore=shutil.ignore_patterns("tests"))
    kb02 = candidate / "KB-02-hematuria-exposed.yaml"
    kb02.write_text(kb02.read_text().replace("status: active", "status: active  # candidate", 1))
    with running(database_url) as plain:
        plain_cards = [c["summary"] for c in plain.call(PV, pv_body())["cards"]]
    with running(database_url, shadow_rules_dir=str(candidate)) as svc:
        body = pv_body()
        assert [c["summary"] for c in svc.call(PV, body)["cards"]] == plain_cards  # nothing shown from shadow
        rows = svc.rows(hook_instance=body["hookInstance"])
        live = {r.rule_set_version for r in rows if r.rule_set == "live"}
        shadow = [r for r in rows if r.rule_set == "shadow"]
        assert shadow and {r.rule_set_version for r in shadow}.isdisjoint(live)
        assert all(r.card_uuid is None for r in shadow)
        assert any(r.rule_id == "KB-02" and r.outcome == "fired" for r in shadow)
        assert svc.governance.counters()["shadow_evaluated"] >= 1


# -- retention ---------------------------------------------------------------------------------------------


def test_retention_prunes_old_decisions(database_url: str) -> None:
    with running(database_url, retention_days=10) as svc:
        body = pv_body()
        svc.call(PV, body)
        assert svc.rows(hook_instance=body["hookInstance"])
        assert svc.governance.prune(datetime.now(UTC) + timedelta(days=5))["decisions"] == 0
        pruned = svc.governance.prune(datetime.now(UTC) + timedelta(days=11))
        assert pruned["decisions"] >= 1 and pruned["cards"] >= 1
        assert svc.rows(hook_instance=body["hookInstance"]) == []


# -- the background writer ---------------------------------------------------------------------------------


def test_writer_batches_and_close_loses_nothing() -> None:
    written: list[list[int]] = []
    writer: BackgroundWriter[int] = BackgroundWriter(lambda batch: written.append(list(batch)), batch_size=50,
                                                     interval_s=0.05)
    for i in range(1000):
        assert writer.submit(i)
    assert writer.close()
    assert [i for batch in written for i in batch] == list(range(1000))
    assert max(len(b) for b in written) <= 50 and len(written) < 1000
    stats = writer.stats()
    assert (stats.accepted, stats.written, stats.dropped, stats.pending) == (1000, 1000, 0, 0)
    assert not writer.submit(1)  # closed: refused and counted
    assert writer.stats().dropped == 1


def test_writer_full_queue_drops_and_counts_without_blocking() -> None:
    gate = threading.Event()
    writer: BackgroundWriter[int] = BackgroundWriter(lambda batch: gate.wait(10), capacity=5, batch_size=1,
                                                     interval_s=0.01)
    started = time.monotonic()
    results = [writer.submit(i) for i in range(50)]
    assert time.monotonic() - started < 5  # generous: the point is it does not wait for the sink
    assert results.count(False) >= 40
    assert writer.stats().dropped == results.count(False)
    gate.set()
    assert writer.close()
    assert writer.stats().written == results.count(True)


def test_writer_retries_then_counts_failures() -> None:
    calls: list[int] = []

    def flaky(batch: Sequence[int]) -> None:
        calls.append(len(batch))
        if len(calls) < 2:
            raise RuntimeError("database restarting")

    writer: BackgroundWriter[int] = BackgroundWriter(flaky, interval_s=0.01, retries=3)
    writer.submit(1)
    assert writer.flush(10)
    assert writer.stats().written == 1 and writer.stats().failed == 0

    def down(batch: Sequence[int]) -> None:
        raise RuntimeError("down")

    dead: BackgroundWriter[int] = BackgroundWriter(down, interval_s=0.01, retries=2)
    dead.submit(1)
    dead.submit(2)
    dead.close()
    assert dead.stats().failed == 2 and dead.stats().written == 0


def test_writer_keeps_records_through_an_outage_and_writes_them_in_order() -> None:
    """The default (retries=None): a failing sink keeps its batch and retries with back-off; nothing lost."""
    down = threading.Event()
    down.set()
    written: list[int] = []
    errors: list[str] = []
    recovered = threading.Event()

    def sink(batch: Sequence[int]) -> None:
        if down.is_set():
            raise ConnectionError("database down")
        written.extend(batch)

    writer: BackgroundWriter[int] = BackgroundWriter(sink, interval_s=0.01, max_backoff_s=0.05,
                                                     on_error=lambda exc: errors.append(type(exc).__name__),
                                                     on_recovery=recovered.set)
    for i in range(5):
        writer.submit(i)
    deadline = time.monotonic() + 10
    while len(errors) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = writer.stats()
    assert stats.failing and stats.pending == 5 and stats.delayed == 5 and stats.failed == 0
    assert not writer.flush(0.2)  # cannot drain while the sink is down
    writer.submit(5)
    down.clear()
    assert writer.flush(10) and recovered.is_set()
    assert written == list(range(6))
    stats = writer.stats()
    assert (stats.written, stats.failed, stats.delayed, stats.failing) == (6, 0, 5, False)
    assert set(errors) == {"ConnectionError"}
    assert writer.close()


def test_writer_close_gives_up_at_its_deadline_and_counts_the_loss() -> None:
    def down(batch: Sequence[int]) -> None:
        raise ConnectionError("down")

    writer: BackgroundWriter[int] = BackgroundWriter(down, interval_s=0.01, max_backoff_s=0.05)
    for i in range(3):
        writer.submit(i)
    started = time.monotonic()
    assert writer.close(0.5) is False
    assert time.monotonic() - started < 5
    assert writer.stats().failed == 3 and writer.stats().pending == 0


# -- the suppression decision (pure) -----------------------------------------------------------------------

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def _snooze(kind: str = "overridden", indicator: str = "warning", evidence: frozenset[str] = frozenset({"a", "b"})
            ) -> SnoozeView:
    return SnoozeView("KB-02", kind, "already-investigated", indicator, evidence, NOW + timedelta(days=30))


@pytest.mark.parametrize(("fired", "held"), [
    (Fired("KB-02", "warning", frozenset({"a", "b"})), True),
    (Fired("KB-02", "info", frozenset({"a"})), True),
    (Fired("KB-02", "warning", frozenset({"a", "c"})), False),  # new evidence breaks the snooze
    (Fired("KB-02", "critical", frozenset({"a"})), False),  # a rising indicator breaks it
    (Fired("KB-07", "warning", frozenset({"a"})), False),  # another rule is not affected
])
def test_snooze_holds_only_without_new_evidence_or_rise(fired: Fired, held: bool) -> None:
    result = hold_back([fired], [_snooze()], hook="patient-view")
    assert (fired.rule_id in result) is held


def test_dedupe_needs_the_same_draft_and_order_sign() -> None:
    before = [ShownBefore("KB-02", "critical", frozenset({"d1"}))]
    fired = [Fired("KB-02", "critical", frozenset())]
    assert hold_back(fired, [], before, hook="order-sign", drafts=frozenset({"d1", "d2"}))
    assert not hold_back(fired, [], before, hook="order-sign", drafts=frozenset({"d3"}))
    assert not hold_back(fired, [], before, hook="order-select", drafts=frozenset({"d1"}))
