"""A bounded background writer: the request path hands records over and answers at once.

Writing the card issue log and the decision log inside the request cost 1-2 ms per call (a SQLite commit,
or a PostgreSQL round trip) and made the answer wait on the database. Here a request only appends to a
bounded in-memory queue; one daemon thread drains it in batches (one transaction per batch). When the
queue is full the record is dropped and COUNTED, never waited for.

A write that fails (the database is down) keeps its batch at the head of the queue and is tried again
with a capped back-off, so an outage shorter than the queue's capacity loses nothing: the cards issued
meanwhile are logged when the store answers again, and their feedback is still attributable. A writer
built with ``retries=N`` gives a batch up after N attempts instead (counted as failed): for work that is
worth nothing late (shadow evaluation). ``close()`` (SIGTERM, atexit) drains what was accepted, within its
timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger("cds_service.governance.writer")

T = TypeVar("T")

__all__ = ["BackgroundWriter", "WriterStats"]

#: How long close() keeps retrying a sink that is failing when it is called (shutdown during an outage).
CLOSE_WHILE_FAILING_S = 2.0


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters since start (for /metrics and the health page): all in records, not batches."""

    accepted: int
    written: int
    dropped: int  # refused because the queue was full (or the writer closed)
    failed: int  # given up: after ``retries`` attempts, or unwritten when close() timed out
    delayed: int  # whose first write attempt failed (written later, or still pending)
    pending: int
    batches: int
    capacity: int
    failing: bool  # the last write attempt failed: the sink is down right now


class BackgroundWriter(Generic[T]):
    """Drain submitted records into *sink* (called with a list, in submission order) on a daemon thread."""

    def __init__(self, sink: Callable[[Sequence[T]], None], *, capacity: int = 10_000, batch_size: int = 500,
                 interval_s: float = 0.2, retries: int | None = None, max_backoff_s: float = 5.0,
                 on_error: Callable[[BaseException], None] | None = None,
                 on_recovery: Callable[[], None] | None = None, name: str = "kbladder-writer") -> None:
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be positive")
        self._sink = sink
        self.capacity = capacity
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.retries = retries
        self.max_backoff_s = max_backoff_s
        self._on_error = on_error
        self._on_recovery = on_recovery
        self._queue: deque[T] = deque()
        self._cond = threading.Condition()
        self._in_flight: list[T] = []
        self._accepted = self._written = self._dropped = self._failed = self._delayed = self._batches = 0
        self._failing = False
        self._closing = False
        self._close_deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- request path -------------------------------------------------------------------------------

    def submit(self, record: T) -> bool:
        """Queue *record*; False (and counted) when the queue is full or the writer is closed. Never blocks
        beyond taking a lock."""
        with self._cond:
            if self._closing or len(self._queue) >= self.capacity:
                self._dropped += 1
                return False
            self._queue.append(record)
            self._accepted += 1
            if len(self._queue) >= self.batch_size:
                self._cond.notify_all()
            return True

    def pending(self) -> list[T]:
        """A copy of the records not yet written, in flight included (read-your-writes in this process)."""
        with self._cond:
            return [*self._in_flight, *self._queue]

    # -- control ------------------------------------------------------------------------------------

    def stats(self) -> WriterStats:
        with self._cond:
            return WriterStats(self._accepted, self._written, self._dropped, self._failed, self._delayed,
                               len(self._queue) + len(self._in_flight), self._batches, self.capacity, self._failing)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every record accepted so far has been written (or given up); True when drained."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._cond.notify_all()
            while self._queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(min(remaining, 0.05))
                self._cond.notify_all()
            return True

    def close(self, timeout_s: float = 30.0) -> bool:
        """Stop accepting, write what was accepted, stop the thread. Idempotent; True when nothing was lost."""
        with self._cond:
            self._closing = True
            if self._failing:  # the sink is down now: one more try, not a shutdown held for the full timeout
                timeout_s = min(timeout_s, CLOSE_WHILE_FAILING_S)
            self._close_deadline = min(self._close_deadline, time.monotonic() + timeout_s)
            self._cond.notify_all()
        self._thread.join(timeout_s + 1.0)
        lost = 0
        with self._cond:
            if self._thread.is_alive() or self._queue:  # the sink stayed down until the deadline
                lost = len(self._queue) + len(self._in_flight)
                self._failed += lost
                self._queue.clear()
                self._in_flight = []
        if lost:
            log.error("background writer closed with records unwritten", extra={"fields": {
                "writer": self._thread.name, "lost": lost, "written": self.stats().written}})
        return lost == 0

    # -- the thread ---------------------------------------------------------------------------------

    def _take(self) -> list[T]:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait(self.interval_s)
            if len(self._queue) < self.batch_size and not self._closing:
                self._cond.wait(self.interval_s)  # let a batch gather: one transaction for many calls
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            self._in_flight = batch
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                with self._cond:
                    self._in_flight = []
                    if self._closing:
                        self._cond.notify_all()
                        return
                continue
            attempts = 0
            delay = 0.1
            while True:
                attempts += 1
                error = self._write(batch)
                if error is None:
                    self._done(batch, written=True)
                    break
                if attempts == 1:  # a batch is retried in place: count its records once
                    with self._cond:
                        self._delayed += len(batch)
                if self.retries is not None and attempts >= self.retries:
                    self._done(batch, written=False)
                    break
                if self._wait_before_retry(delay):  # closing and past the deadline: give up what is left
                    with self._cond:
                        self._queue.extendleft(reversed(batch))
                        self._in_flight = []
                        self._cond.notify_all()
                    return
                delay = min(delay * 2, self.max_backoff_s)

    def _write(self, batch: list[T]) -> BaseException | None:
        try:
            self._sink(batch)
        except Exception as exc:  # the writer outlives any database trouble
            with self._cond:
                first = not self._failing
                self._failing = True
            if first:  # once per failing streak, not once per attempt of a long outage
                log.error("background write failed; retrying", extra={"fields": {
                    "writer": self._thread.name, "error": type(exc).__name__, "records": len(batch)}})
            if self._on_error is not None:
                self._on_error(exc)
            return exc
        with self._cond:
            recovered, self._failing = self._failing, False
        if recovered:
            log.warning("background write succeeded again", extra={"fields": {"writer": self._thread.name}})
            if self._on_recovery is not None:
                self._on_recovery()
        return None

    def _done(self, batch: list[T], *, written: bool) -> None:
        with self._cond:
            self._in_flight = []
            self._batches += 1
            if written:
                self._written += len(batch)
            else:
                self._failed += len(batch)
            self._cond.notify_all()

    def _wait_before_retry(self, delay: float) -> bool:
        """Sleep *delay* (cut short by close); True when closing and the close deadline has passed."""
        until = time.monotonic() + delay
        with self._cond:
            while True:
                now = time.monotonic()
                if self._closing and now >= self._close_deadline:
                    return True
                end = min(until, self._close_deadline) if self._closing else until
                if now >= end:
                    return False
                self._cond.wait(end - now)  # flush() and submit() notify: wait out the back-off anyway
