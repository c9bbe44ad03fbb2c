"""Conformance checker for emitted cards, responses and discovery (checklist G2, G3, C1-C11, D3, P1-P3)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from cds_service.cdshooks import card_problems, discovery_problems, empty_value_problems, response_problems

SPEC = Path(__file__).resolve().parent / "data" / "fhir-tools-ig"  # HL7 examples copied into the repo
DEL = object()


def good_card() -> dict[str, Any]:
    return {
        "uuid": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
        "summary": "Ketamine use documented: consider bladder assessment",
        "detail": "**Ketamine-induced uropathy** can present as frequency and dysuria.",
        "indicator": "warning",
        "source": {
            "label": "k-bladder CDS",
            "url": "https://kbladder.example.org/about",
            "icon": "https://kbladder.example.org/icon.png",
            "topic": {"system": "http://example.org/kbladder/topics", "code": "ketamine-uropathy",
                      "display": "Ketamine uropathy"},
        },
        "suggestions": [
            {
                "label": "Order urinalysis",
                "uuid": "c0f6f5a5-5b3a-4c1e-9f6e-1d2c3b4a5f60",
                "isRecommended": True,
                "actions": [
                    {"type": "create", "description": "Order urinalysis",
                     "resource": {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal"}},
                    {"type": "update", "description": "Reduce dose",
                     "resource": {"resourceType": "MedicationRequest", "id": "mr-1", "status": "draft"}},
                    {"type": "delete", "description": "Cancel ketamine order",
                     "resourceId": "MedicationRequest/mr-1"},
                ],
            }
        ],
        "selectionBehavior": "at-most-one",
        "overrideReasons": [
            {"system": "http://example.org/kbladder/override", "code": "not-relevant",
             "display": "Not relevant"}
        ],
        "links": [
            {"label": "Guideline", "url": "https://kbladder.example.org/guideline", "type": "absolute"},
            {"label": "Launch app", "url": "https://app.example.org/launch", "type": "smart",
             "appContext": "{\"patient\":\"1\"}", "autolaunchable": False},
        ],
        "extension": {"org.example.kbladder.ruleVersion": {"id": "r1", "version": "1.0.0"}},
    }


def minimal_card() -> dict[str, Any]:
    return {
        "uuid": "0d8e2a8e-2f5e-4a93-a1c8-1c9f3b7a4e21",
        "summary": "Info",
        "indicator": "info",
        "source": {"label": "k-bladder CDS"},
    }


def edit(card: dict[str, Any], path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    card = copy.deepcopy(card)
    target: Any = card
    for step in path[:-1]:
        target = target[step]
    if value is DEL:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return card


def test_good_and_minimal_cards_pass() -> None:
    assert card_problems(good_card()) == []
    assert card_problems(minimal_card()) == []
    assert response_problems({"cards": [good_card(), minimal_card()]}) == []


def test_empty_cards_is_the_allowed_empty_array() -> None:
    assert response_problems({"cards": []}) == []


S0 = ("suggestions", 0)
A = (*S0, "actions")
VIOLATIONS: list[tuple[str, tuple[str | int, ...], object, str]] = [
    # G2 empties, anywhere
    ("detail empty string", ("detail",), "", "empty string"),
    ("detail null", ("detail",), None, "null"),
    ("links empty", ("links",), [], "empty array"),
    ("extension empty", ("extension",), {}, "empty object"),
    ("empty inside resource", (*A, 0, "resource", "note"), [], "empty array"),
    ("null inside resource", (*A, 1, "resource", "status"), None, "null"),
    # card basics
    ("uuid missing", ("uuid",), DEL, "card.uuid"),
    ("uuid not uuid", ("uuid",), "card-1", "card.uuid"),
    ("summary missing", ("summary",), DEL, "card.summary"),
    ("summary number", ("summary",), 3, "card.summary"),
    ("summary 140 chars", ("summary",), "x" * 140, "must be < 140"),
    ("detail not string", ("detail",), ["x"], "card.detail"),
    ("indicator missing", ("indicator",), DEL, "card.indicator"),
    ("indicator hard-stop", ("indicator",), "hard-stop", "card.indicator"),
    ("indicator success", ("indicator",), "success", "card.indicator"),
    ("unknown member", ("overrideReason",), [{"code": "x"}], "unknown member"),
    ("extension array", ("extension",), [{"url": "x"}], "extension: must be a JSON object"),
    # source
    ("source missing", ("source",), DEL, "card.source"),
    ("source string", ("source",), "k-bladder", "card.source"),
    ("source label missing", ("source", "label"), DEL, "card.source.label"),
    ("source url relative", ("source", "url"), "/about", "card.source.url"),
    ("source icon not url", ("source", "icon"), "icon.png", "card.source.icon"),
    ("topic string", ("source", "topic"), "ketamine", "card.source.topic"),
    ("topic no system", ("source", "topic", "system"), DEL, "card.source.topic.system"),
    ("topic no code", ("source", "topic", "code"), DEL, "card.source.topic.code"),
    ("source extension list", ("source", "extension"), [1], "card.source.extension"),
    # suggestions
    ("suggestions not array", ("suggestions",), {"label": "x"}, "card.suggestions: must be an array"),
    ("selectionBehavior missing", ("selectionBehavior",), DEL, "cds-resp-6"),
    ("selectionBehavior bad", ("selectionBehavior",), "all", "card.selectionBehavior"),
    ("suggestion label missing", (*S0, "label"), DEL, "card.suggestions[0].label"),
    ("suggestion uuid missing", (*S0, "uuid"), DEL, "card.suggestions[0].uuid"),
    ("suggestion isRecommended string", (*S0, "isRecommended"), "yes", "isRecommended"),
    ("suggestion not object", S0, "Order urinalysis", "card.suggestions[0]: must be an object"),
    ("suggestion extension list", (*S0, "extension"), ["x"], "card.suggestions[0].extension"),
    ("actions not array", A, {"type": "create"}, "actions: must be an array"),
    ("action type bad", (*A, 0, "type"), "insert", "card.suggestions[0].actions[0].type"),
    ("action description missing", (*A, 0, "description"), DEL, "actions[0].description"),
    ("create without resource", (*A, 0, "resource"), DEL, "actions[0].resource"),
    ("create resource without resourceType", (*A, 0, "resource", "resourceType"), DEL, "actions[0].resource"),
    ("update without id", (*A, 1, "resource", "id"), DEL, "actions[1].resource.id"),
    ("delete without resourceId", (*A, 2, "resourceId"), DEL, "cds-resp-2"),
    ("delete with bad resourceId", (*A, 2, "resourceId"), "mr-1", "actions[2].resourceId"),
    ("delete with resource (deprecated)", (*A, 2, "resource"), "MedicationRequest/mr-1", "deprecated"),
    ("resourceId not relative", (*A, 0, "resourceId"), "https://x/MedicationRequest/1",
     "actions[0].resourceId"),
    ("action not object", (*A, 0), "create", "actions[0]: must be an object"),
    # overrideReasons
    ("overrideReasons object", ("overrideReasons",), {"code": "x"}, "overrideReasons: must be an array"),
    ("overrideReason no display", ("overrideReasons", 0, "display"), DEL, "overrideReasons[0].display"),
    ("overrideReason no code", ("overrideReasons", 0, "code"), DEL, "overrideReasons[0].code"),
    ("overrideReason string", ("overrideReasons", 0), "Not relevant", "overrideReasons[0]"),
    # links
    ("links object", ("links",), {"label": "x"}, "links: must be an array"),
    ("link label missing", ("links", 0, "label"), DEL, "links[0].label"),
    ("link url missing", ("links", 0, "url"), DEL, "links[0].url"),
    ("link url relative", ("links", 0, "url"), "/guideline", "links[0].url"),
    ("link type missing", ("links", 0, "type"), DEL, "links[0].type"),
    ("link type bad", ("links", 0, "type"), "web", "links[0].type"),
    ("appContext on absolute", ("links", 0, "appContext"), "x", "cds-resp-3"),
    ("appContext object", ("links", 1, "appContext"), {"a": 1}, "links[1].appContext: must be a string"),
    ("autolaunchable string", ("links", 1, "autolaunchable"), "true", "links[1].autolaunchable"),
    ("link not object", ("links", 0), "https://x", "links[0]: must be an object"),
]


@pytest.mark.parametrize(
    ("path", "value", "fragment"), [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS]
)
def test_card_violation_is_caught(path: tuple[str | int, ...], value: object, fragment: str) -> None:
    card = edit(good_card(), path, value)
    problems = card_problems(card)
    assert any(fragment in p for p in problems), problems
    # The same violation is found when the card sits in a response.
    assert response_problems({"cards": [minimal_card(), card]})


def test_more_than_one_recommended_with_at_most_one() -> None:
    card = good_card()
    second = copy.deepcopy(card["suggestions"][0])
    second["uuid"] = "a1f6f5a5-5b3a-4c1e-9f6e-1d2c3b4a5f61"
    card["suggestions"].append(second)
    assert any("cds-resp-1" in p for p in card_problems(card))
    card["selectionBehavior"] = "any"
    assert card_problems(card) == []


def test_summary_of_139_chars_is_fine() -> None:
    assert card_problems(edit(minimal_card(), ("summary",), "x" * 139)) == []


def test_card_not_a_mapping() -> None:
    assert card_problems("card") == ["card: must be an object"]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (None, "must be a JSON object"),
        ({}, "$.cards: required array"),
        ({"cards": None}, "$.cards"),
        ({"cards": {}}, "$.cards"),
        ({"cards": ["x"]}, "$.cards[0]: must be an object"),
        ({"cards": [], "systemActions": []}, "$.systemActions: empty array"),
        ({"cards": [], "systemActions": {}}, "$.systemActions"),
        ({"cards": [], "systemActions": [{"type": "create", "description": "x"}]},
         "systemActions[0].resource"),
        ({"cards": [], "extension": []}, "$.extension"),
        ({"cards": [], "card": []}, "unknown member"),
        ({"cards": [minimal_card(), minimal_card()]}, "unique"),
        ({"cards": [edit(minimal_card(), ("summary",), "")]}, "$.cards[0].summary"),
    ],
)
def test_response_violations(body: object, fragment: str) -> None:
    problems = response_problems(body)
    assert any(fragment in p for p in problems), problems


def test_system_actions_ok() -> None:
    body = {"cards": [], "systemActions": [
        {"type": "update", "description": "Flag",
         "resource": {"resourceType": "Flag", "id": "f1", "status": "active"}}
    ]}
    assert response_problems(body) == []


def test_empty_value_walker_paths() -> None:
    assert empty_value_problems({"a": [{"b": ""}], "c": None}) == [
        "$.a[0].b: empty string is not allowed; omit the member",
        "$.c: null is not allowed; omit the member",
    ]
    assert empty_value_problems({"cards": []}, allow_empty=frozenset({"$.cards"})) == []
    assert empty_value_problems(0) == [] and empty_value_problems(False) == []


def test_spec_examples() -> None:
    response = json.loads((SPEC / "Binary-CDSHooksResponse.json").read_text())
    # The spec example omits uuid on its second card; we always set it (feedback needs it, C6).
    assert response_problems(response) == ["$.cards[1].uuid: every card needs a UUID (feedback refers to it)"]
    assert discovery_problems(json.loads((SPEC / "Binary-CDSHookServices.json").read_text())) == []


def test_discovery() -> None:
    service = {
        "hook": "patient-view",
        "id": "kbladder",
        "title": "Ketamine bladder",
        "description": "Warns about ketamine-induced uropathy",
        "prefetch": {"patient": "Patient/{{context.patientId}}"},
    }
    assert discovery_problems({"services": []}) == []
    assert discovery_problems({"services": [service, {**service, "hook": "order-sign"}]}) == []
    assert any("duplicate" in p for p in discovery_problems({"services": [service, service]}))
    bad = {**service, "prefetch": {"today": "Observation?date=ge{{today}}", "n": 3}, "usageRequirements": 1}
    problems = discovery_problems({"services": [bad]})
    assert any("prefetch.today" in p and "date/relative" in p for p in problems)
    assert any("prefetch.n: template must be a string" in p for p in problems)
    assert any("usageRequirements" in p for p in problems)
    missing = {k: v for k, v in service.items() if k != "description"}
    assert any("description: required" in p for p in discovery_problems({"services": [missing]}))
    assert any("unknown member" in p for p in discovery_problems({"services": [{**service, "version": "2"}]}))
    assert any("title" in p for p in discovery_problems({"services": [{**service, "title": ""}]}))
    assert discovery_problems({"services": "x"})[-1] == "$.services: required array"
    assert discovery_problems([]) == ["$: discovery response must be a JSON object"]
    assert any("must be an object" in p for p in discovery_problems({"services": ["x"]}))
    assert any("prefetch" in p for p in discovery_problems({"services": [{**service, "prefetch": ["x"]}]}))
