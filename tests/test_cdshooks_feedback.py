"""Feedback body validation (checklist F2, F6; 3.0-ballot invariants cds-fb-1..3)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from cds_service.cdshooks import Coding, FeedbackItem, RequestError, parse_feedback

CARD = "9368d37b-283f-44a0-93ea-547cebab93ed"
SUGGESTION = "e56e1945-20b3-4393-8503-a1a20fd73152"
COMMENT = "SECRET clinician comment about the patient"


def accepted() -> dict[str, Any]:
    return {
        "card": CARD,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": SUGGESTION}],
        "outcomeTimestamp": "2020-12-11T00:00:00Z",
    }


def overridden() -> dict[str, Any]:
    return {
        "card": CARD,
        "outcome": "overridden",
        "overrideReason": {
            "reason": {
                "code": "reason-code-provided-by-service",
                "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
                "display": "Patient refused",
            },
            "userComment": COMMENT,
        },
        "outcomeTimestamp": "2020-12-11T00:00:00.52+02:00",
    }


def _body(*items: dict[str, Any]) -> dict[str, Any]:
    return {"feedback": list(items)}


def test_accepted_and_overridden_parse() -> None:
    items = parse_feedback(_body(accepted(), overridden()))
    assert len(items) == 2
    first, second = items
    assert isinstance(first, FeedbackItem)
    assert first.card == CARD and first.outcome == "accepted"
    assert first.accepted_suggestions == (SUGGESTION,)
    assert first.override_reason is None and first.reason_code == "" and first.user_comment is None
    assert first.outcome_timestamp == datetime(2020, 12, 11, tzinfo=UTC)
    assert second.outcome == "overridden"
    assert second.reason_code == "reason-code-provided-by-service"
    assert second.override_reason is not None
    assert second.override_reason.reason == Coding(
        "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
        "reason-code-provided-by-service",
        "Patient refused",
    )
    assert second.user_comment == COMMENT
    assert second.outcome_timestamp == datetime(2020, 12, 10, 22, 0, 0, 520000, tzinfo=UTC)


def test_overridden_without_reason_and_sandbox_reason_without_display() -> None:
    bare = overridden()
    del bare["overrideReason"]
    sandbox = overridden()
    sandbox["overrideReason"] = {"reason": {"code": "x"}}
    comment_only = overridden()
    comment_only["overrideReason"] = {"userComment": "because"}
    items = parse_feedback(_body(bare, sandbox, comment_only))
    assert items[0].override_reason is None
    assert items[1].reason_code == "x" and items[1].reason_system == ""
    assert items[2].reason_code == "" and items[2].user_comment == "because"


def test_empty_feedback_array_is_a_no_op() -> None:
    assert parse_feedback({"feedback": []}) == []


def test_unknown_members_are_ignored() -> None:
    item = accepted()
    item["extension"] = {"org.example": 1}
    item["somethingElse"] = True
    assert parse_feedback({"feedback": [item], "extension": {"a": 1}})[0].card == CARD


@pytest.mark.parametrize(
    "stamp",
    ["1985-04-12T23:20:50.52Z", "1985-04-12T23:20:50Z", "1985-04-12t23:20:50z",
     "1996-12-19T16:39:57-08:00", "2020-01-01T00:00:00.123456789Z"],
)
def test_rfc3339_instants(stamp: str) -> None:
    item = accepted()
    item["outcomeTimestamp"] = stamp
    parsed = parse_feedback(_body(item))[0].outcome_timestamp
    assert parsed.tzinfo is UTC


def _set(item: dict[str, Any], path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    item = copy.deepcopy(item)
    target: Any = item
    for step in path[:-1]:
        target = target[step]
    if value is _DEL:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return item


_DEL = object()
ACC, OVR = accepted, overridden
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("card missing", _set(ACC(), ("card",), _DEL), "feedback[1].card"),
    ("card not uuid", _set(ACC(), ("card",), "card-1"), "feedback[1].card"),
    ("outcome missing", _set(ACC(), ("outcome",), _DEL), "feedback[1].outcome"),
    ("outcome ignored", _set(ACC(), ("outcome",), "ignored"), "feedback[1].outcome"),
    ("outcome case", _set(ACC(), ("outcome",), "Accepted"), "feedback[1].outcome"),
    ("timestamp missing", _set(ACC(), ("outcomeTimestamp",), _DEL), "feedback[1].outcomeTimestamp"),
    ("timestamp date only", _set(ACC(), ("outcomeTimestamp",), "2020-12-11"), "feedback[1].outcomeTimestamp"),
    ("timestamp no zone", _set(ACC(), ("outcomeTimestamp",), "2020-12-11T00:00:00"),
     "feedback[1].outcomeTimestamp"),
    ("timestamp no seconds", _set(ACC(), ("outcomeTimestamp",), "2020-12-11T00:00Z"),
     "feedback[1].outcomeTimestamp"),
    ("timestamp invalid date", _set(ACC(), ("outcomeTimestamp",), "2020-02-30T00:00:00Z"),
     "feedback[1].outcomeTimestamp"),
    ("timestamp number", _set(ACC(), ("outcomeTimestamp",), 1607644800), "feedback[1].outcomeTimestamp"),
    ("accepted without suggestions", _set(ACC(), ("acceptedSuggestions",), _DEL),
     "feedback[1].acceptedSuggestions"),
    ("accepted suggestions empty", _set(ACC(), ("acceptedSuggestions",), []),
     "feedback[1].acceptedSuggestions"),
    ("accepted suggestions object", _set(ACC(), ("acceptedSuggestions",), {"id": SUGGESTION}),
     "feedback[1].acceptedSuggestions"),
    ("accepted suggestion string", _set(ACC(), ("acceptedSuggestions", 0), SUGGESTION),
     "feedback[1].acceptedSuggestions[0]"),
    ("accepted suggestion id missing", _set(ACC(), ("acceptedSuggestions", 0), {}),
     "feedback[1].acceptedSuggestions[0].id"),
    ("accepted suggestion id not uuid", _set(ACC(), ("acceptedSuggestions", 0, "id"), "s1"),
     "feedback[1].acceptedSuggestions[0].id"),
    ("accepted with overrideReason", _set(ACC(), ("overrideReason",), {"userComment": "x"}),
     "feedback[1].overrideReason"),
    ("overridden with acceptedSuggestions", _set(OVR(), ("acceptedSuggestions",), [{"id": SUGGESTION}]),
     "feedback[1].acceptedSuggestions"),
    ("overrideReason string", _set(OVR(), ("overrideReason",), COMMENT), "feedback[1].overrideReason"),
    ("overrideReason empty", _set(OVR(), ("overrideReason",), {}), "feedback[1].overrideReason"),
    ("reason string", _set(OVR(), ("overrideReason", "reason"), "refused"),
     "feedback[1].overrideReason.reason"),
    ("reason without code", _set(OVR(), ("overrideReason", "reason", "code"), _DEL),
     "feedback[1].overrideReason.reason.code"),
    ("reason system number", _set(OVR(), ("overrideReason", "reason", "system"), 1),
     "feedback[1].overrideReason.reason.system"),
    ("reason display number", _set(OVR(), ("overrideReason", "reason", "display"), 1),
     "feedback[1].overrideReason.reason.display"),
    ("userComment number", _set(OVR(), ("overrideReason", "userComment"), 5),
     "feedback[1].overrideReason.userComment"),
]


@pytest.mark.parametrize(("item", "field"), [(i, f) for _, i, f in INVALID], ids=[n for n, _, _ in INVALID])
def test_invalid_item_names_field(item: dict[str, Any], field: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_feedback(_body(accepted(), item))
    assert info.value.field == field
    assert info.value.status == 400
    assert COMMENT not in str(info.value) and "SECRET" not in repr(info.value)


@pytest.mark.parametrize(
    ("body", "field"),
    [(None, "$"), ([], "$"), ({}, "feedback"), ({"feedback": None}, "feedback"),
     ({"feedback": {"card": CARD}}, "feedback"), ({"feedback": ["x"]}, "feedback[0]")],
)
def test_invalid_body(body: object, field: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_feedback(body)
    assert info.value.field == field


def test_repr_hides_user_comment() -> None:
    item = parse_feedback(_body(overridden()))[0]
    assert COMMENT not in repr(item)
    assert "reason-code-provided-by-service" in repr(item)
