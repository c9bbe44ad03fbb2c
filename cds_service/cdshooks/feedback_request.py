"""Parse and validate a CDS Hooks 2.0 feedback body (checklist F1-F6).

Feedback is how we learn whether a rule helps or annoys clinicians, so it is validated as strictly as a
hook request and turned into typed items the store can key idempotently (F3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from .request import RequestError, is_uuid

__all__ = ["Coding", "FeedbackItem", "OverrideReason", "parse_feedback"]

Outcome = Literal["accepted", "overridden"]

#: RFC 3339 §5.6 date-time (seconds required, offset required).
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)


@dataclass(frozen=True, slots=True)
class Coding:
    """A FHIR-style Coding as used by CDS Hooks (overrideReasons, source.topic)."""

    system: str | None
    code: str
    display: str | None = None


@dataclass(frozen=True, slots=True)
class OverrideReason:
    """Why the clinician overrode a card. ``user_comment`` is clinician free text: store, never log."""

    reason: Coding | None
    user_comment: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    """One entry of ``feedback``: what the user did with one card."""

    card: str
    outcome: Outcome
    outcome_timestamp: datetime
    accepted_suggestions: tuple[str, ...] = ()
    override_reason: OverrideReason | None = None

    @property
    def reason_code(self) -> str:
        """Override reason code, or "" (part of the store's natural key)."""
        reason = self.override_reason.reason if self.override_reason else None
        return reason.code if reason else ""

    @property
    def reason_system(self) -> str:
        reason = self.override_reason.reason if self.override_reason else None
        return (reason.system or "") if reason else ""

    @property
    def user_comment(self) -> str | None:
        return self.override_reason.user_comment if self.override_reason else None


def parse_rfc3339(value: object, path: str) -> datetime:
    """Parse an RFC 3339 instant into an aware UTC datetime, or raise RequestError naming *path*."""
    match = _RFC3339.match(value) if isinstance(value, str) else None
    if match is None:
        raise RequestError(path, "expected an RFC 3339 instant such as 1985-04-12T23:20:50.52Z")
    date, time, fraction, offset = match.groups()
    fraction = (fraction or "")[:7]  # Python keeps microseconds only
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        parsed = datetime.fromisoformat(f"{date}T{time}{fraction}{offset}")
    except ValueError:
        raise RequestError(path, "expected a valid calendar date and time") from None
    return parsed.astimezone(UTC)


def _coding(value: object, path: str) -> Coding:
    if not isinstance(value, dict):
        raise RequestError(path, "expected a Coding object")
    code = value.get("code")
    if not isinstance(code, str) or not code.strip():
        raise RequestError(f"{path}.code", "expected a non-empty string")
    system = value.get("system")
    if system is not None and (not isinstance(system, str) or not system.strip()):
        raise RequestError(f"{path}.system", "expected a non-empty string (URI)")
    display = value.get("display")
    if display is not None and not isinstance(display, str):
        raise RequestError(f"{path}.display", "expected a string")
    # The sandbox sends code (+system) without display (F6): display stays optional.
    return Coding(system=system, code=code, display=display or None)


def _override_reason(value: object, path: str) -> OverrideReason:
    if not isinstance(value, dict):
        raise RequestError(path, "expected an object")
    reason = None
    if value.get("reason") is not None:
        reason = _coding(value["reason"], f"{path}.reason")
    comment = value.get("userComment")
    if comment is not None and not isinstance(comment, str):
        raise RequestError(f"{path}.userComment", "expected a string")
    comment = comment if comment and comment.strip() else None
    if reason is None and comment is None:
        raise RequestError(path, "expected a reason, a userComment or both (cds-fb-3)")
    return OverrideReason(reason=reason, user_comment=comment)


def _accepted(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise RequestError(path, "expected a non-empty array of {\"id\": <suggestion uuid>}")
    ids: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise RequestError(f"{path}[{i}]", "expected an object")
        if not is_uuid(item.get("id")):
            raise RequestError(f"{path}[{i}].id", "expected the suggestion's UUID")
        ids.append(item["id"])
    return tuple(ids)


def _item(value: object, path: str) -> FeedbackItem:
    if not isinstance(value, dict):
        raise RequestError(path, "expected an object")
    if not is_uuid(value.get("card")):
        raise RequestError(f"{path}.card", "expected the card's UUID")
    outcome = value.get("outcome")
    if outcome not in ("accepted", "overridden"):
        raise RequestError(f"{path}.outcome", "expected 'accepted' or 'overridden'")
    if value.get("outcomeTimestamp") is None:
        raise RequestError(f"{path}.outcomeTimestamp", "is required")
    timestamp = parse_rfc3339(value["outcomeTimestamp"], f"{path}.outcomeTimestamp")

    accepted: tuple[str, ...] = ()
    reason: OverrideReason | None = None
    has_accepted = value.get("acceptedSuggestions") is not None
    has_reason = value.get("overrideReason") is not None
    if outcome == "accepted":
        if not has_accepted:
            raise RequestError(f"{path}.acceptedSuggestions", "is required when outcome is 'accepted'")
        if has_reason:
            raise RequestError(f"{path}.overrideReason", "only allowed when outcome is 'overridden'")
        accepted = _accepted(value["acceptedSuggestions"], f"{path}.acceptedSuggestions")
    else:
        if has_accepted:
            raise RequestError(f"{path}.acceptedSuggestions", "only allowed when outcome is 'accepted'")
        if has_reason:
            reason = _override_reason(value["overrideReason"], f"{path}.overrideReason")
    return FeedbackItem(
        card=value["card"],
        outcome=outcome,
        outcome_timestamp=timestamp,
        accepted_suggestions=accepted,
        override_reason=reason,
    )


def parse_feedback(body: object) -> list[FeedbackItem]:
    """Validate a decoded feedback body and return its items in order.

    Raises :class:`RequestError` (field such as ``feedback[0].outcome``) on the first problem; values,
    including the clinician's comment, are never echoed.
    """
    if not isinstance(body, dict):
        raise RequestError("$", "expected a JSON object")
    items: Any = body.get("feedback")
    if items is None:
        raise RequestError("feedback", "is required")
    if not isinstance(items, list):
        raise RequestError("feedback", "expected an array")
    return [_item(item, f"feedback[{i}]") for i, item in enumerate(items)]
