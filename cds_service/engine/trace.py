"""What an evaluation says about itself: three-valued truth, evidence, missing data.

Missing data is a first-class answer. A cumulative dose below the threshold while two
doses could not be converted is not "false" but UNKNOWN, so the service can say what is
missing instead of giving a silent all-clear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from cds_service.clinical.timeutil import iso


class Truth(Enum):
    """Kleene logic: UNKNOWN when missing data could change the answer."""

    TRUE = "true"
    FALSE = "false"
    UNKNOWN = "unknown"

    def __bool__(self) -> bool:  # only TRUE fires a tier
        return self is Truth.TRUE

    @staticmethod
    def of(flag: bool) -> Truth:
        return Truth.TRUE if flag else Truth.FALSE


def all_of(truths: list[Truth]) -> Truth:
    """Kleene AND."""
    if any(t is Truth.FALSE for t in truths):
        return Truth.FALSE
    return Truth.UNKNOWN if any(t is Truth.UNKNOWN for t in truths) else Truth.TRUE


def any_of(truths: list[Truth]) -> Truth:
    """Kleene OR."""
    if any(t is Truth.TRUE for t in truths):
        return Truth.TRUE
    return Truth.UNKNOWN if any(t is Truth.UNKNOWN for t in truths) else Truth.FALSE


def not_of(truth: Truth) -> Truth:
    """Kleene NOT."""
    return {Truth.TRUE: Truth.FALSE, Truth.FALSE: Truth.TRUE}.get(truth, Truth.UNKNOWN)


@dataclass(frozen=True, slots=True)
class Evidence:
    """One row of the card's evidence table, pointing at the resource it came from."""

    ref: str
    time: datetime | None
    item: str
    value: str
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"reference": self.ref, "item": self.item}
        if self.time is not None:
            row["date"] = iso(self.time)
        if self.value:
            row["value"] = self.value
        if self.note:
            row["note"] = self.note
        return row


@dataclass(slots=True)
class Outcome:
    """The result of one condition: truth, the value computed, the evidence, what was missing."""

    truth: Truth
    value: Any = None
    detail: str = ""
    evidence: list[Evidence] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"truth": self.truth.value}
        if self.value is not None:
            data["value"] = self.value if isinstance(self.value, int | float | str | bool) else str(self.value)
        if self.detail:
            data["detail"] = self.detail
        if self.evidence:
            data["evidence"] = [e.as_json() for e in self.evidence]
        if self.missing:
            data["missing"] = list(self.missing)
        return data
