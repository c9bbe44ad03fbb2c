"""The OpenAPI 3.1 contract of the service, built from the hook table so it cannot drift from what we serve.

``GET /openapi.json`` serves :func:`openapi_document`; ``docs/openapi.json`` is the same document kept in the
repository for integrators (``tests/test_openapi.py`` keeps the two equal and runs schemathesis against it).
Regenerate the file with ``python -m cds_service.http.openapi > docs/openapi.json``.

Schemas describe what the service validates (request bodies, per-hook context) and what it emits (cards,
suggestions, actions, links, override reasons, the ``extension`` members, OperationOutcome errors).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from flask import Blueprint, Response

from cds_service import __version__
from cds_service.cdshooks import HOOKS, SERVICES
from cds_service.cdshooks.hooks import ContextField, HookDefinition

bp = Blueprint("openapi", __name__)

FHIR_ID = r"^[A-Za-z0-9\-.]{1,64}$"
UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _text(min_length: int = 1) -> dict[str, Any]:
    return {"type": "string", "minLength": min_length, "pattern": r"\S"}


def _context_field(field: ContextField) -> dict[str, Any]:
    if field.name == "userId":
        types = "|".join(field.reference_types)
        return {"type": "string", "pattern": rf"^({types})/[A-Za-z0-9\-.]{{1,64}}$", "description": field.description}
    if field.type == "string":
        return {"type": "string", "pattern": FHIR_ID, "description": field.description}
    if field.type == "array":
        return {"type": "array", "minItems": 1, "description": field.description,
                "items": {"type": "string", "pattern": r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$"}}
    return {**_ref("Bundle"), "description": field.description}


def _context(hook: HookDefinition) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"Context of the {hook.id} hook (CDS Hooks Library {hook.hook_version}).",
        "required": [f.name for f in hook.required_fields],
        "properties": {f.name: _context_field(f) for f in hook.fields},
    }


def _hook_request(hook: HookDefinition) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["hook", "hookInstance", "context"],
        "properties": {
            "hook": {"const": hook.id},
            "hookInstance": {"type": "string", "pattern": UUID},
            "fhirServer": {"type": "string", "format": "uri", "pattern": "^https?://"},
            "fhirAuthorization": _ref("FhirAuthorization"),
            "context": _ref(f"Context-{hook.id}"),
            "prefetch": {"type": "object", "additionalProperties": {
                "oneOf": [_ref("Resource"), {"type": "null"}]}},
            "extension": {"type": "object"},
        },
        "dependentRequired": {"fhirAuthorization": ["fhirServer"]},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {400: "The body does not conform; `expression` names the field", 401: "JWT missing or invalid",
               403: "fhirServer not allowed for the calling client", 404: "Unknown CDS service",
               412: "Prefetch missing and no FHIR server access; one `expression` per missing key",
               413: "Body or prefetch too large", 415: "Not application/json", 503: "No valid rule set loaded, "
               "or no store for feedback"}
    return {str(s): {"description": reasons[s], "content": {JSON: {"schema": _ref("OperationOutcome")}}}
            for s in statuses}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _schemas() -> dict[str, Any]:
    coding = {"type": "object", "required": ["system", "code"], "additionalProperties": False,
              "properties": {"system": _text(), "code": _text(), "display": _text()}}
    schemas: dict[str, Any] = {
        "Resource": {"type": "object", "required": ["resourceType"],
                     "properties": {"resourceType": {"type": "string", "pattern": "^[A-Z][A-Za-z]+$"}}},
        "Bundle": {"type": "object", "required": ["resourceType"], "properties": {
            "resourceType": {"const": "Bundle"},
            "entry": {"type": "array", "items": {"type": "object", "required": ["resource"],
                                                 "properties": {"resource": _ref("Resource")}}}}},
        "FhirAuthorization": {"type": "object", "required": ["access_token", "token_type", "expires_in", "scope",
                                                              "subject"], "properties": {
            "access_token": {"type": "string", "pattern": "^[!-~]+$"}, "token_type": {"const": "Bearer"},
            "expires_in": {"type": "integer", "minimum": 0}, "scope": _text(), "subject": _text(),
            "patient": {"type": "string", "pattern": FHIR_ID}}},
        "Coding": coding,
        "OverrideReason": {**coding, "required": ["system", "code", "display"]},
        "Source": {"type": "object", "required": ["label"], "additionalProperties": False, "properties": {
            "label": _text(), "url": {"type": "string", "format": "uri"}, "icon": {"type": "string", "format": "uri"},
            "topic": _ref("Coding")}},
        "Action": {"type": "object", "required": ["type", "description"], "additionalProperties": False,
                   "properties": {"type": {"enum": ["create", "update", "delete"]}, "description": _text(),
                                  "resource": _ref("Resource"), "resourceId": {"type": "string"},
                                  "extension": {"type": "object"}}},
        "Suggestion": {"type": "object", "required": ["label"], "additionalProperties": False, "properties": {
            "label": _text(), "uuid": {"type": "string"}, "isRecommended": {"type": "boolean"},
            "actions": {"type": "array", "minItems": 1, "items": _ref("Action")}, "extension": {"type": "object"}}},
        "Link": {"type": "object", "required": ["label", "url", "type"], "additionalProperties": False,
                 "properties": {"label": _text(), "url": {"type": "string", "format": "uri"},
                                "type": {"enum": ["absolute", "smart"]}, "appContext": {"type": "string"},
                                "autolaunchable": {"type": "boolean"}, "extension": {"type": "object"}}},
        "Card": {"type": "object", "required": ["summary", "indicator", "source"], "additionalProperties": False,
                 "properties": {
                     "uuid": {"type": "string"}, "summary": {"type": "string", "minLength": 1, "maxLength": 139},
                     "detail": _text(), "indicator": {"enum": ["info", "warning", "critical"]},
                     "source": _ref("Source"), "suggestions": {"type": "array", "minItems": 1,
                                                               "items": _ref("Suggestion")},
                     "selectionBehavior": {"enum": ["at-most-one", "any"]},
                     "overrideReasons": {"type": "array", "minItems": 1, "items": _ref("OverrideReason")},
                     "links": {"type": "array", "minItems": 1, "items": _ref("Link")},
                     "extension": {"type": "object", "description": "org.kbladder-cds.rule (id, version), "
                                   "evidence and what could not be checked"}},
                 "dependentRequired": {"suggestions": ["selectionBehavior"]}},
        "CdsResponse": {"type": "object", "required": ["cards"], "additionalProperties": False, "properties": {
            "cards": {"type": "array", "items": _ref("Card")},
            "systemActions": {"type": "array", "items": _ref("Action")},
            "extension": {"type": "object", "description": "org.kbladder-cds.undecided, .missingData, "
                          ".skippedResources and .ruleSetVersion when any of them has something to say"}}},
        "Service": {"type": "object", "required": ["hook", "id", "description"], "additionalProperties": False,
                    "properties": {"hook": {"enum": sorted(HOOKS)}, "id": _text(), "title": _text(),
                                   "description": _text(), "usageRequirements": _text(),
                                   "prefetch": {"type": "object", "additionalProperties": {"type": "string"}},
                                   "version": {"type": "string", "description": "Only with cds_hooks_version 3.0"},
                                   "hookVersion": {"type": "string", "description": "Only with cds_hooks_version 3.0"},
                                   "extension": {"type": "object"}}},
        "Discovery": {"type": "object", "required": ["services"], "additionalProperties": False,
                      "properties": {"services": {"type": "array", "items": _ref("Service")}}},
        "FeedbackItem": {"type": "object", "required": ["card", "outcome", "outcomeTimestamp"], "properties": {
            "card": _text(), "outcome": {"enum": ["accepted", "overridden"]},
            "acceptedSuggestions": {"type": "array", "items": {"type": "object", "required": ["id"],
                                                               "properties": {"id": _text()}}},
            "overrideReason": {"type": "object", "properties": {"reason": _ref("Coding"),
                                                                "userComment": {"type": "string"}}},
            "outcomeTimestamp": {"type": "string", "format": "date-time"}}},
        "Feedback": {"type": "object", "required": ["feedback"], "properties": {
            "feedback": {"type": "array", "minItems": 1, "items": _ref("FeedbackItem")}}},
        "OperationOutcome": {"type": "object", "required": ["resourceType", "issue"], "additionalProperties": False,
                             "properties": {"resourceType": {"const": "OperationOutcome"}, "issue": {
                                 "type": "array", "minItems": 1, "items": {
                                     "type": "object", "required": ["severity", "code"], "additionalProperties": False,
                                     "properties": {
                                         "severity": {"enum": ["fatal", "error", "warning", "information"]},
                                         "code": {"type": "string", "pattern": "^[a-z-]+$"},
                                         "details": {"type": "object", "properties": {"text": {"type": "string"}}},
                                         "diagnostics": {"type": "string"},
                                         "expression": {"type": "array", "minItems": 1,
                                                        "items": {"type": "string"}}}}}}},
        "Readiness": {"type": "object", "required": ["status", "checks"], "properties": {
            "status": {"enum": ["ready", "not ready"]},
            "checks": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}}}},
        "Health": {"type": "object", "required": ["status", "rules", "store", "auth"], "properties": {
            "status": {"enum": ["ok", "degraded", "unavailable"]}, "rules": {"type": "object"},
            "store": {"type": "object"}, "auth": {"type": "object"}}},
    }
    for hook in HOOKS.values():
        schemas[f"Context-{hook.id}"] = _context(hook)
        schemas[f"Request-{hook.id}"] = _hook_request(hook)
    return schemas


def openapi_document() -> dict[str, Any]:
    """The whole contract: discovery, one hook and one feedback endpoint per service, probes, metrics."""
    paths: dict[str, Any] = {
        "/cds-services": {"get": {
            "operationId": "discovery", "summary": "CDS Hooks discovery: our services and their prefetch templates",
            "responses": {"200": _json(_ref("Discovery"), "The services"), **_errors(401)}}},
    }
    for service in SERVICES.values():
        hook = HOOKS[service.hook]
        paths[f"/cds-services/{service.id}"] = {"post": {
            "operationId": f"call-{service.id}", "summary": service.title, "description": service.description,
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref(f"Request-{hook.id}")}}},
            "responses": {"200": _json(_ref("CdsResponse"), "Cards (an empty list when there is nothing to say)"),
                          **_errors(400, 401, 403, 412, 413, 415, 503)}}}
        paths[f"/cds-services/{service.id}/feedback"] = {"post": {
            "operationId": f"feedback-{service.id}", "summary": f"What clinicians did with {service.id} cards",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("Feedback")}}},
            "responses": {"200": _json({"type": "object", "maxProperties": 0}, "Stored (idempotently)"),
                          **_errors(400, 401, 413, 415, 503)}}}
    probe = {"livez": ({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
                       "The process answers", ()),
             "readyz": (_ref("Readiness"), "Rules loaded, store reachable, pinned rule-set version served", (503,)),
             "healthz": (_ref("Health"), "The whole picture, for people", (503,))}
    for name, (schema, summary, failing) in probe.items():
        responses = {"200": _json(schema, summary)}
        responses.update({str(s): _json(schema, "Not ready / unhealthy") for s in failing})
        paths[f"/{name}"] = {"get": {"operationId": name, "summary": summary, "responses": responses}}
    paths["/metrics"] = {"get": {"operationId": "metrics", "summary": "Prometheus metrics (text format)",
                                 "responses": {"200": {"description": "Metrics",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    paths["/openapi.json"] = {"get": {"operationId": "openapi", "summary": "This document",
                                      "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "k-bladder CDS Hooks service", "version": __version__,
                 "description": "CDS Hooks 2.0 service warning about ketamine-induced bladder injury. With auth "
                                "on, /cds-services URLs need the EHR's JWT (docs/integration.md).",
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "paths": paths,
        "components": {"schemas": _schemas(), "securitySchemes": {
            "cdsClientJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    }


def openapi_text() -> str:
    """The document as committed in docs/openapi.json (sorted keys, two-space indent, final newline)."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


@bp.get("/openapi.json")
def serve_openapi() -> Response:
    return Response(openapi_text(), mimetype=JSON)


if __name__ == "__main__":
    sys.stdout.write(openapi_text())
