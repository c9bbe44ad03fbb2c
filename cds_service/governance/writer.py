"""A bounded background writer: the request path hands records over and answers at once.

Writing the card issue log and the decision log inside the request cost 1-2 ms per call (a SQLite commit,
or a PostgreSQL round trip) and made the answer wait on the database. Here a request only appends to a
bounded in-memory queue; one daemon thread drains it in batches (one transaction per batch). When the
queue is full the record is dropped and COUNTED, never waited for. ``close()`` (SIGTERM, atexit) drains
everything that was accepted, so a clean shutdown loses nothing. Failed batches are retried with a back-off
a few times, then counted as failed.
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


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters since start (for /metrics and the health page): all in records, not batches."""

    accepted: int
    written: int
    dropped: int  # refused because the queue was full
    failed: int  # given up after retries (database down for longer than the retries)
    pending: int
    batches: int
    capacity: int


class BackgroundWriter(Generic[T]):
    """Drain submitted records into *sink* (called with a list, in submission order) on a daemon thread."""

    def __init__(self, sink: Callable[[Sequence[T]], None], *, capacity: int = 10_000, batch_size: int = 500,
                 interval_s: float = 0.2, retries: int = 3, name: str = "kbladder-writer") -> None:
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be positive")
        self._sink = sink
        self.capacity = capacity
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.retries = retries
        self._queue: deque[T] = deque()
        self._cond = threading.Condition()
        self._in_flight: list[T] = []
        self._accepted = self._written = self._dropped = self._failed = self._batches = 0
        self._closing = False
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
            return WriterStats(self._accepted, self._written, self._dropped, self._failed,
                               len(self._queue) + len(self._in_flight), self._batches, self.capacity)

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
            self._cond.notify_all()
        self._thread.join(timeout_s)
        stats = self.stats()
        if stats.pending:
            log.error("decision log writer closed with records unwritten", extra={"fields": {
                "pending": stats.pending, "written": stats.written}})
        return stats.pending == 0

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
            ok = self._write(batch)
            with self._cond:
                self._in_flight = []
                self._batches += 1
                if ok:
                    self._written += len(batch)
                else:
                    self._failed += len(batch)
                self._cond.notify_all()

    def _write(self, batch: list[T]) -> bool:
        delay = 0.1
        for attempt in range(1, self.retries + 1):
            try:
                self._sink(batch)
                return True
            except Exception as exc:  # the writer outlives any database trouble
                log.error("decision log write failed", extra={"fields": {
                    "error": type(exc).__name__, "records": len(batch), "attempt": attempt}})
                if attempt < self.retries:
                    time.sleep(delay)
                    delay *= 4
        return False
