"""Per-resource facts kept across hook calls, keyed by the resource's content digest.

An EHR sends the same resources on patient-view, order-select and order-sign, and a record reads the
same facts from each (status, start, end, value, upper limit of normal): for a heavy patient, thousands of
resources re-read on every call. The facts are a pure function of the resource's content, the patient's
birth date (ages as onsets) and the rule set's coded grades, so a rule set keeps one bounded cache
(``RuleSet.compiled``) and records look resources up by the digest the validation step already computed
(:class:`cds_service.fhir.parse.Checked`): no second hash.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

#: Facts of this many resources (≈ 0.3–1 kB each): a heavy patient has ~2,500.
SIZE = 20_000


class FactsCache:
    """A bounded, thread-safe LRU map (digest, resource type, birth date) → facts tuple."""

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self._items: OrderedDict[tuple[Any, ...], tuple[Any, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        """Copied or sent to another process empty (a lock does not travel; the facts are re-read there)."""
        return (FactsCache, (self.size,))

    def get(self, key: tuple[Any, ...]) -> tuple[Any, ...] | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[Any, ...], facts: tuple[Any, ...]) -> None:
        with self._lock:
            self._items[key] = facts
            if len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
