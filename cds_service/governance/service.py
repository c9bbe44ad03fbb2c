"""Governance at the service edge: the decision log writer, the shadow rule set, snooze lookups, retention.

One :class:`Governance` per process (per gunicorn worker). The request path only (a) reads snoozes for the
rules that fired, (b) hands the call's log to the bounded background writer, (c) hands the record to the
shadow queue; everything else (writing, shadow evaluation, pruning) happens on background threads, so a
slow or absent database never withholds or delays advice. Store errors are logged and counted, never raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from cds_service.cdshooks import HookRequest, drafts_to_evaluate
from cds_service.cdshooks.feedback_request import FeedbackItem
from cds_service.clinical.record import PatientRecord
from cds_service.config import Settings
from cds_service.engine.evaluate import Evaluation, evaluate
from cds_service.engine.model import RuleSet
from cds_service.rules_state import RulesState
from cds_service.store import Store
from cds_service.store.outage import StoreOutage
from cds_service.store.store import IssuedCard

from .decisionlog import LIVE, SHADOW, CallInfo, CallLog, evidence_hashes, keyed_hash, log_entries
from .suppress import Fired, ShownBefore, SnoozeView, accepted_until, hold_back, override_until
from .writer import BackgroundWriter

log = logging.getLogger("cds_service.governance")

PRUNE_EVERY_S = 3600.0


@dataclass(slots=True)
class ShadowJob:
    """A live call's data, queued for the shadow rule set."""

    call: CallInfo
    record: PatientRecord
    live_shown: frozenset[str]


@dataclass(slots=True)
class Counters:
    """Counts for /metrics and /healthz (integ reads these through ``Governance.counters()``)."""

    suppressed: int = 0
    lookup_errors: int = 0
    shadow_evaluated: int = 0
    shadow_errors: int = 0
    shadow_ms_total: float = 0.0
    pruned: dict[str, int] = field(default_factory=dict)


class Governance:
    """Decision log, shadow mode, suppression and retention for one process."""

    def __init__(self, settings: Settings, store: Store | None, key: bytes,
                 shadow: RulesState | None = None, *, outage: StoreOutage | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.key = key
        self.shadow = shadow
        self.outage = outage
        self.clock = clock or (lambda: datetime.now(UTC))
        self.counts = Counters()
        self._lock = threading.Lock()
        self.writer: BackgroundWriter[CallLog] | None = None
        self.shadow_queue: BackgroundWriter[ShadowJob] | None = None
        if store is not None:
            # Kept until written (retries=None): cards issued during a store outage stay attributable.
            self.writer = BackgroundWriter(store.write_calls, capacity=settings.log_queue_capacity,
                                           name="kbladder-decision-log", on_error=self._log_write_failed,
                                           on_recovery=self._log_write_recovered)
            if shadow is not None:
                self.shadow_queue = BackgroundWriter(self._run_shadow, capacity=settings.log_queue_capacity,
                                                     batch_size=20, interval_s=0.05, retries=1,
                                                     name="kbladder-shadow")
        self._stop = threading.Event()
        self._draining = threading.Event()  # set while flush() waits: the backlog runs at full speed
        self._pruner: threading.Thread | None = None

    def _log_write_failed(self, exc: BaseException) -> None:
        if self.outage is not None:
            self.outage.failed("card log", exc, self.clock())

    def _log_write_recovered(self) -> None:
        if self.outage is not None and self.store is not None:
            self.outage.recovered(self.store, self.clock())

    def log_status(self) -> dict[str, Any]:
        """The card/decision log writer for /healthz: what waits, what failed at first, what was lost."""
        if self.writer is None:
            return {}
        stats = self.writer.stats()
        return {"cardLogFailures": stats.delayed, "cardLogPending": stats.pending,
                "cardLogDropped": stats.dropped, "cardLogLost": stats.failed}

    # -- request path ----------------------------------------------------------------------------------

    def call_info(self, request: HookRequest, service_id: str, client: Any, now: datetime) -> CallInfo:
        """The call's identity, hashed: patient, user and the drafts judged (by resource type/id)."""
        drafts = drafts_to_evaluate(request.hook, request.draft_orders, request.selections, request.draft_urls)
        draft_ids = sorted({keyed_hash(self.key, f"{d.get('resourceType')}/{d.get('id')}") for d in drafts})
        user = request.context.get("userId")
        return CallInfo(
            service_id=service_id, hook=request.hook, hook_instance=request.hook_instance, now=now,
            patient_hash=keyed_hash(self.key, request.patient_id),
            user_hash=keyed_hash(self.key, str(user)) if user else None,
            issuer=getattr(getattr(client, "issuer", None), "iss", None),
            tenant=getattr(client, "tenant", None), drafts=tuple(draft_ids),
        )

    def hold_back(self, call: CallInfo, evaluation: Evaluation) -> dict[str, str]:
        """Fired rules whose cards feedback suppressed (store lookups here; the decision is pure)."""
        if self.store is None:
            return {}
        fired = [Fired(r.rule.id, r.fired.indicator, frozenset(evidence_hashes(self.key, r)))
                 for r in evaluation.results if r.shows_card and r.fired is not None]
        if not fired:
            return {}
        ids = [f.rule_id for f in fired]
        try:
            snoozes = [SnoozeView(s.rule_id, s.kind, s.reason_code, s.indicator, s.evidence, s.until)
                       for s in self.store.active_snoozes(call.patient_hash, ids, call.now)]
            shown: list[ShownBefore] = []
            if call.hook == "order-sign" and call.drafts and self.settings.order_dedupe_window_s > 0:
                since = call.now - timedelta(seconds=self.settings.order_dedupe_window_s)
                shown = [ShownBefore(rule, indicator, frozenset(drafts)) for rule, indicator, drafts in
                         self.store.shown_recently(patient_hash=call.patient_hash, user_hash=call.user_hash,
                                                   hook="order-select", since=since, rule_ids=ids)]
                shown += self._pending_shown(call, since, ids)
        except SQLAlchemyError as exc:  # show the cards: a database problem must not silence advice
            with self._lock:
                self.counts.lookup_errors += 1
            log.error("suppression lookup failed; cards shown", extra={"fields": {"error": type(exc).__name__}})
            return {}
        held = hold_back(fired, snoozes, shown, hook=call.hook, drafts=frozenset(call.drafts))
        if held:
            with self._lock:
                self.counts.suppressed += len(held)
        return held

    def _pending_shown(self, call: CallInfo, since: datetime, ids: Sequence[str]) -> list[ShownBefore]:
        """Cards this process showed at order-select that the writer has not flushed yet."""
        if self.writer is None:
            return []
        out = []
        for pending in self.writer.pending():
            info = pending.call
            if (info.hook == "order-select" and info.patient_hash == call.patient_hash
                    and info.user_hash == call.user_hash and info.now >= since):
                out.extend(ShownBefore(e.rule_id, e.indicator, frozenset(info.drafts)) for e in pending.entries
                           if e.outcome == "fired" and e.card_uuid and e.rule_id in ids)
        return out

    def record(self, call: CallInfo, evaluation: Evaluation, cards: Sequence[Mapping[str, Any]],
               held: Mapping[str, str], issues: Sequence[tuple[str, str, str, str]],
               record: PatientRecord | None) -> None:
        """Queue the call's decision log (and card issues); queue the shadow evaluation. Never blocks."""
        if self.writer is None:
            return
        entries = log_entries(evaluation, cards, key=self.key, rule_set=LIVE, suppressed=held) \
            if self.settings.decision_log else ()
        self.writer.submit(CallLog(call, entries, tuple(issues)))
        if self.shadow_queue is not None and record is not None:
            shown = frozenset(e.rule_id for e in entries if e.outcome == "fired" and e.card_uuid)
            self.shadow_queue.submit(ShadowJob(call, record, shown))

    # -- shadow rule set (background thread) ------------------------------------------------------------

    def _run_shadow(self, jobs: Sequence[ShadowJob]) -> None:
        ruleset = self.shadow.ruleset if self.shadow is not None else None
        if ruleset is None or self.writer is None:
            return
        for job in jobs:
            started = time.perf_counter()
            try:
                evaluation = evaluate(ruleset, job.record, hook=job.call.hook, now=job.call.now, trace=False)
            except Exception as exc:  # a broken candidate must never disturb the live service
                with self._lock:
                    self.counts.shadow_errors += 1
                log.error("shadow evaluation failed", extra={"fields": {"error": type(exc).__name__}})
                continue
            entries = log_entries(evaluation, (), key=self.key, rule_set=SHADOW)
            elapsed = time.perf_counter() - started
            with self._lock:
                self.counts.shadow_evaluated += 1
                self.counts.shadow_ms_total += elapsed * 1000
            self.writer.submit(CallLog(job.call, entries))
            # Hold the shadow to its CPU share: it competes with live answers for the interpreter.
            share = self.settings.shadow_cpu_share
            if share < 1 and not self._stop.is_set() and not self._draining.is_set():
                self._stop.wait(elapsed * (1 / share - 1))

    # -- feedback -----------------------------------------------------------------------------------

    def learn(self, card: IssuedCard, item: FeedbackItem, ruleset: RuleSet | None) -> bool:
        """Turn an override with a reason, or an accepted suggestion, into a snooze for the patient."""
        if self.store is None or card.patient_hash is None or ruleset is None:
            return False
        rule = next((r for r in ruleset.rules if r.id == card.rule_id), None)
        if rule is None:
            return False
        at = item.outcome_timestamp
        if item.outcome == "accepted":
            until: datetime | None = accepted_until(rule, at)
        else:
            until = override_until(rule, card.indicator, item.reason_code, at)
        if until is None:
            return False
        return self.store.add_snooze(patient_hash=card.patient_hash, rule_id=card.rule_id,
                                     rule_version=card.rule_version, kind=item.outcome, reason_code=item.reason_code,
                                     indicator=card.indicator, evidence=card.evidence, card_uuid=card.card_uuid,
                                     created_at=at, until=until)

    def issued_card(self, card_uuid: str) -> IssuedCard | None:
        """The issued card, looking at this process's unwritten log too (feedback right after the answer).

        The queue is read BEFORE the store: a record leaves the queue only after its transaction committed,
        so a card not in the queue at that moment is already in the store. (Store first, then queue, loses
        a card written in between: feedback sent within milliseconds of the answer got 404.)
        """
        assert self.store is not None
        for pending in self.writer.pending() if self.writer is not None else ():
            for uuid, rule_id, version, indicator in pending.cards:
                if uuid == card_uuid:
                    entry = next((e for e in pending.entries if e.card_uuid == uuid), None)
                    return IssuedCard(uuid, pending.call.service_id, rule_id, version, indicator, pending.call.now,
                                      pending.call.patient_hash, entry.evidence if entry else ())
        return self.store.issued_card(card_uuid)

    # -- lifecycle -------------------------------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        """Everything countable, flat (metrics)."""
        with self._lock:
            out: dict[str, Any] = {
                "suppressed": self.counts.suppressed, "lookup_errors": self.counts.lookup_errors,
                "shadow_evaluated": self.counts.shadow_evaluated, "shadow_errors": self.counts.shadow_errors,
                "shadow_ms_total": round(self.counts.shadow_ms_total, 3),
            }
        for name, writer in (("log", self.writer), ("shadow", self.shadow_queue)):
            if writer is not None:
                stats = writer.stats()
                out.update({f"{name}_{k}": getattr(stats, k) for k in stats.__slots__})
        return out

    def start_pruning(self, clock: Any) -> None:
        """Prune the decision log past its retention once an hour, on a daemon thread."""
        if self.store is None or self._pruner is not None:
            return

        def run() -> None:
            while True:
                self.prune(clock())
                if self._stop.wait(PRUNE_EVERY_S):
                    return

        self._pruner = threading.Thread(target=run, name="kbladder-retention", daemon=True)
        self._pruner.start()

    def prune(self, now: datetime) -> dict[str, int]:
        """Delete what is older than the retention (decision log, card issues) and expired snoozes."""
        if self.store is None:
            return {}
        try:
            pruned = self.store.prune(now - timedelta(days=self.settings.retention_days), now)
        except SQLAlchemyError as exc:
            log.error("retention prune failed", extra={"fields": {"error": type(exc).__name__}})
            return {}
        with self._lock:
            self.counts.pruned = pruned
        if any(pruned.values()):
            log.info("retention pruned", extra={"fields": pruned})
        return pruned

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait for the shadow queue, then the log writer, to drain (tests, shutdown)."""
        ok = True
        self._draining.set()  # someone waits for the backlog: no CPU-share pauses until it is written
        try:
            if self.shadow_queue is not None:
                ok = self.shadow_queue.flush(timeout_s)
            if self.writer is not None:
                ok = self.writer.flush(timeout_s) and ok
        finally:
            self._draining.clear()
        return ok

    def close(self, timeout_s: float = 30.0) -> bool:
        """Shutdown: finish shadow work, write everything accepted, stop the threads. Idempotent."""
        self._stop.set()
        ok = True
        if self.shadow_queue is not None:
            ok = self.shadow_queue.close(timeout_s)
        if self.writer is not None:
            ok = self.writer.close(timeout_s) and ok
        return ok
