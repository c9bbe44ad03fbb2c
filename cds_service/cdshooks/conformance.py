"""Conformance checker for what our service emits: cards, whole responses and discovery documents.

Strict clients and validators (Inferno, cds-validator's additionalProperties:false) reject responses that
the spec forbids, and an EHR may silently drop a malformed card. These checks run in tests and in the
HTTP layer's self-check so a bad card is caught before a clinician misses a warning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .hooks import template_problems
from .request import is_absolute_http_url, is_uuid

__all__ = ["card_problems", "discovery_problems", "empty_value_problems", "response_problems"]

INDICATORS = frozenset({"info", "warning", "critical"})
SELECTION_BEHAVIORS = frozenset({"at-most-one", "any"})
ACTION_TYPES = frozenset({"create", "update", "delete"})
LINK_TYPES = frozenset({"absolute", "smart"})

_CARD_KEYS = frozenset(
    {"uuid", "summary", "detail", "indicator", "source", "suggestions", "selectionBehavior",
     "overrideReasons", "links", "extension"}
)
_SOURCE_KEYS = frozenset({"label", "url", "icon", "topic", "extension"})
_SUGGESTION_KEYS = frozenset({"label", "uuid", "isRecommended", "actions", "extension"})
_ACTION_KEYS = frozenset({"type", "description", "resource", "resourceId", "extension"})
_LINK_KEYS = frozenset({"label", "url", "type", "appContext", "autolaunchable", "extension"})
_CODING_KEYS = frozenset({"system", "code", "display", "extension"})
_RESPONSE_KEYS = frozenset({"cards", "systemActions", "extension"})
_SERVICE_KEYS = frozenset(
    {"hook", "title", "description", "id", "prefetch", "usageRequirements", "extension"}
)
_REFERENCE = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")
_MAX_SUMMARY = 140


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def empty_value_problems(
    value: object, path: str = "$", *, allow_empty: frozenset[str] = frozenset()
) -> list[str]:
    """G2: report every null, "", [] or {} anywhere under *value* (also inside FHIR resources).

    *allow_empty* holds the paths where an empty array is legitimate (``cards``, ``services``).
    """
    problems: list[str] = []
    if value is None:
        problems.append(f"{path}: null is not allowed; omit the member")
    elif isinstance(value, str):
        if value == "":
            problems.append(f"{path}: empty string is not allowed; omit the member")
    elif isinstance(value, list):
        if not value and path not in allow_empty:
            problems.append(f"{path}: empty array is not allowed; omit the member")
        for i, item in enumerate(value):
            problems.extend(empty_value_problems(item, f"{path}[{i}]", allow_empty=allow_empty))
    elif isinstance(value, dict):
        if not value:
            problems.append(f"{path}: empty object is not allowed; omit the member")
        for key, item in value.items():
            problems.extend(empty_value_problems(item, f"{path}.{key}", allow_empty=allow_empty))
    return problems


def _unknown_keys(obj: Mapping[str, Any], allowed: frozenset[str], path: str) -> list[str]:
    return [f"{path}.{key}: unknown member (typo? put custom data under extension)"
            for key in obj if key not in allowed]


def _extension_problems(obj: Mapping[str, Any], path: str) -> list[str]:
    if "extension" in obj and not isinstance(obj["extension"], dict):
        return [f"{path}.extension: must be a JSON object (G3)"]
    return []


def _member_problems(obj: Mapping[str, Any], allowed: frozenset[str], path: str) -> list[str]:
    """Unknown members and a non-object ``extension`` on one CDS Hooks object."""
    return _unknown_keys(obj, allowed, path) + _extension_problems(obj, path)


def _coding_problems(coding: object, path: str, *, display_required: bool) -> list[str]:
    if not isinstance(coding, Mapping):
        return [f"{path}: must be a Coding object"]
    problems = _member_problems(coding, _CODING_KEYS, path)
    if not _is_text(coding.get("code")):
        problems.append(f"{path}.code: required string")
    if not _is_text(coding.get("system")):
        problems.append(f"{path}.system: required string (URI)")
    if display_required and not _is_text(coding.get("display")):
        problems.append(f"{path}.display: required string")
    elif "display" in coding and not isinstance(coding["display"], str):
        problems.append(f"{path}.display: must be a string")
    return problems


def _action_problems(action: object, path: str) -> list[str]:
    if not isinstance(action, Mapping):
        return [f"{path}: must be an object"]
    problems = _member_problems(action, _ACTION_KEYS, path)
    kind = action.get("type")
    if kind not in ACTION_TYPES:
        problems.append(f"{path}.type: must be one of create, update, delete")
    if not _is_text(action.get("description")):
        problems.append(f"{path}.description: required string")
    resource = action.get("resource")
    if kind in ("create", "update"):
        if not isinstance(resource, Mapping) or not _is_text(resource.get("resourceType")):
            problems.append(f"{path}.resource: {kind} needs a FHIR resource with resourceType")
        elif kind == "update" and not _is_text(resource.get("id")):
            problems.append(f"{path}.resource.id: update needs the entire resource including its id")
    elif kind == "delete":
        if not (isinstance(action.get("resourceId"), str) and _REFERENCE.match(action["resourceId"])):
            problems.append(f"{path}.resourceId: delete needs a relative reference 'Type/id' (cds-resp-2)")
        if "resource" in action:
            problems.append(f"{path}.resource: not allowed on delete (deprecated; use resourceId)")
    if "resourceId" in action and not (
        isinstance(action["resourceId"], str) and _REFERENCE.match(action["resourceId"])
    ) and kind != "delete":
        problems.append(f"{path}.resourceId: must be a relative reference 'Type/id'")
    return problems


def _suggestion_problems(suggestion: object, path: str) -> list[str]:
    if not isinstance(suggestion, Mapping):
        return [f"{path}: must be an object"]
    problems = _member_problems(suggestion, _SUGGESTION_KEYS, path)
    if not _is_text(suggestion.get("label")):
        problems.append(f"{path}.label: required string")
    if not is_uuid(suggestion.get("uuid")):
        problems.append(f"{path}.uuid: every suggestion needs a UUID (feedback refers to it)")
    if "isRecommended" in suggestion and not isinstance(suggestion["isRecommended"], bool):
        problems.append(f"{path}.isRecommended: must be a boolean")
    if "actions" in suggestion:
        actions = suggestion["actions"]
        if not isinstance(actions, list):
            problems.append(f"{path}.actions: must be an array")
        else:
            for i, action in enumerate(actions):
                problems.extend(_action_problems(action, f"{path}.actions[{i}]"))
    return problems


def _link_problems(link: object, path: str) -> list[str]:
    if not isinstance(link, Mapping):
        return [f"{path}: must be an object"]
    problems = _member_problems(link, _LINK_KEYS, path)
    if not _is_text(link.get("label")):
        problems.append(f"{path}.label: required string")
    if not is_absolute_http_url(link.get("url")):
        problems.append(f"{path}.url: required absolute URL")
    kind = link.get("type")
    if kind not in LINK_TYPES:
        problems.append(f"{path}.type: must be 'absolute' or 'smart'")
    if "appContext" in link:
        if kind != "smart":
            problems.append(f"{path}.appContext: only allowed on smart links (cds-resp-3)")
        if not isinstance(link["appContext"], str):
            problems.append(f"{path}.appContext: must be a string")
    if "autolaunchable" in link and not isinstance(link["autolaunchable"], bool):
        problems.append(f"{path}.autolaunchable: must be a boolean")
    return problems


def _source_problems(source: object, path: str) -> list[str]:
    if not isinstance(source, Mapping):
        return [f"{path}: required object with a label"]
    problems = _member_problems(source, _SOURCE_KEYS, path)
    if not _is_text(source.get("label")):
        problems.append(f"{path}.label: required string")
    for key in ("url", "icon"):
        if key in source and not is_absolute_http_url(source[key]):
            problems.append(f"{path}.{key}: must be an absolute URL")
    if "topic" in source:
        problems.extend(_coding_problems(source["topic"], f"{path}.topic", display_required=False))
    return problems


def _array_items(card: Mapping[str, Any], key: str) -> list[Any]:
    """The list under *key*; empty when absent or not an array (that is reported separately)."""
    value = card.get(key)
    return value if isinstance(value, list) else []


def _card_body_problems(card: Mapping[str, Any], path: str) -> list[str]:
    problems = _member_problems(card, _CARD_KEYS, path)
    if not is_uuid(card.get("uuid")):
        problems.append(f"{path}.uuid: every card needs a UUID (feedback refers to it)")
    summary = card.get("summary")
    if not isinstance(summary, str) or not summary.strip():
        problems.append(f"{path}.summary: required string")
    elif len(summary) >= _MAX_SUMMARY:
        problems.append(f"{path}.summary: {len(summary)} characters; must be < {_MAX_SUMMARY}")
    if "detail" in card and not isinstance(card["detail"], str):
        problems.append(f"{path}.detail: must be a (Markdown) string")
    if card.get("indicator") not in INDICATORS:
        problems.append(f"{path}.indicator: must be one of info, warning, critical")
    problems.extend(_source_problems(card.get("source"), f"{path}.source"))

    for key in ("suggestions", "overrideReasons", "links"):
        if key in card and not isinstance(card[key], list):
            problems.append(f"{path}.{key}: must be an array")

    suggestions = _array_items(card, "suggestions")
    behavior = card.get("selectionBehavior")
    if suggestions:
        if behavior is None:
            problems.append(f"{path}.selectionBehavior: required when suggestions are present (cds-resp-6)")
        for i, suggestion in enumerate(suggestions):
            problems.extend(_suggestion_problems(suggestion, f"{path}.suggestions[{i}]"))
        recommended = sum(1 for s in suggestions if isinstance(s, Mapping) and s.get("isRecommended") is True)
        if behavior == "at-most-one" and recommended > 1:
            problems.append(f"{path}.suggestions: at most one isRecommended with at-most-one (cds-resp-1)")
    if behavior is not None and behavior not in SELECTION_BEHAVIORS:
        problems.append(f"{path}.selectionBehavior: must be 'at-most-one' or 'any'")

    for i, coding in enumerate(_array_items(card, "overrideReasons")):
        problems.extend(_coding_problems(coding, f"{path}.overrideReasons[{i}]", display_required=True))
    for i, link in enumerate(_array_items(card, "links")):
        problems.extend(_link_problems(link, f"{path}.links[{i}]"))
    return problems


def card_problems(card: Mapping[str, Any], *, path: str = "card") -> list[str]:
    """Everything wrong with one card we are about to emit (empty list = conformant)."""
    if not isinstance(card, Mapping):
        return [f"{path}: must be an object"]
    return empty_value_problems(card, path) + _card_body_problems(card, path)


def response_problems(body: object) -> list[str]:
    """Everything wrong with a whole hook response ``{"cards": [...], "systemActions": [...]}``."""
    if not isinstance(body, Mapping):
        return ["$: response must be a JSON object"]
    problems = empty_value_problems(body, "$", allow_empty=frozenset({"$.cards"}))
    problems += _member_problems(body, _RESPONSE_KEYS, "$")
    cards = body.get("cards")
    if not isinstance(cards, list):
        problems.append("$.cards: required array (use [] when there is nothing to say)")
    else:
        for i, card in enumerate(cards):
            if not isinstance(card, Mapping):
                problems.append(f"$.cards[{i}]: must be an object")
            else:
                problems.extend(_card_body_problems(card, f"$.cards[{i}]"))
        uuids = [c.get("uuid") for c in cards if isinstance(c, Mapping) and c.get("uuid")]
        if len(uuids) != len(set(uuids)):
            problems.append("$.cards: card uuids must be unique")
    if "systemActions" in body:
        actions = body["systemActions"]
        if not isinstance(actions, list):
            problems.append("$.systemActions: must be an array")
        else:
            for i, action in enumerate(actions):
                problems.extend(_action_problems(action, f"$.systemActions[{i}]"))
    return problems


def discovery_problems(body: object) -> list[str]:
    """Everything wrong with a discovery document ``{"services": [...]}`` (D2-D5, P1-P3)."""
    if not isinstance(body, Mapping):
        return ["$: discovery response must be a JSON object"]
    problems = empty_value_problems(body, "$", allow_empty=frozenset({"$.services"}))
    services = body.get("services")
    if not isinstance(services, list):
        return [*problems, "$.services: required array"]
    seen: set[tuple[Any, Any]] = set()
    for i, service in enumerate(services):
        path = f"$.services[{i}]"
        if not isinstance(service, Mapping):
            problems.append(f"{path}: must be an object")
            continue
        problems.extend(_member_problems(service, _SERVICE_KEYS, path))
        for key in ("hook", "description", "id"):
            if not _is_text(service.get(key)):
                problems.append(f"{path}.{key}: required string")
        for key in ("title", "usageRequirements"):
            if key in service and not isinstance(service[key], str):
                problems.append(f"{path}.{key}: must be a string")
        pair = (service.get("id"), service.get("hook"))
        if pair in seen:
            problems.append(f"{path}: duplicate id/hook pair")
        seen.add(pair)
        prefetch = service.get("prefetch")
        if prefetch is None:
            continue
        if not isinstance(prefetch, Mapping):
            problems.append(f"{path}.prefetch: must be an object of key -> template")
            continue
        for key, template in prefetch.items():
            if not isinstance(template, str):
                problems.append(f"{path}.prefetch.{key}: template must be a string")
                continue
            hook = service.get("hook")
            for problem in template_problems(template, hook if isinstance(hook, str) else ""):
                problems.append(f"{path}.prefetch.{key}: {problem}")
    return problems
