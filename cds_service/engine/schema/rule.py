"""The rule JSON Schema, built from shared ``$defs``, the block registry and the hook table.

Durations, windows, thresholds, value tests, anchors and indicators are each defined once under ``$defs``;
the condition ``oneOf`` lists the blocks of :data:`cds_service.engine.blocks.registry.BLOCKS`, and the
``hooks`` enum is the hook table. ``make schema`` writes the result to ``rule.schema.json`` next to this
module (package data, what the loader validates with) and to ``rules/schema/`` (what editors complete
from); tests/test_schemas.py fails when either file is out of date.
"""

from __future__ import annotations

from typing import Any

from cds_service.cdshooks.hooks import HOOKS
from cds_service.engine.blocks.base import DATA_KEY, DURATION, THRESHOLDS, WINDOW, ref
from cds_service.engine.blocks.filters import NEAR_SCHEMA, VALUE_TEST_SCHEMA, WHERE_SCHEMA
from cds_service.engine.blocks.registry import BLOCKS
from cds_service.engine.context import ANCHORS
from cds_service.engine.model import INDICATORS

ISO_DURATION = r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$"
NAME = ref("name")
INDICATOR = ref("indicator")
#: FHIR resource types a rule's data may read (findings first, then medication events).
DATA_RESOURCES = (
    "Observation",
    "Condition",
    "Procedure",
    "DiagnosticReport",
    "ServiceRequest",
    "AllergyIntolerance",
    "QuestionnaireResponse",
    "MedicationAdministration",
    "MedicationRequest",
    "MedicationStatement",
)


def _keyed(item: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A mapping of snake_case names to *item* (parameters, data, windows, conditions)."""
    return {"type": "object", **extra, "additionalProperties": item, "propertyNames": NAME}


def _one(key: str, body: dict[str, Any]) -> dict[str, Any]:
    """``{key: body}`` and nothing else: one branch of the condition ``oneOf``."""
    return {"type": "object", "additionalProperties": False, "required": [key], "properties": {key: body}}


def shared_defs() -> dict[str, Any]:
    """The pieces every part of a rule reuses, each defined once."""
    return {
        "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
        "indicator": {"enum": list(INDICATORS)},
        "duration": {
            "type": "string",
            "pattern": ISO_DURATION,
            "description": "ISO 8601 duration, e.g. P28D, PT48H, P6M",
        },
        "parameter_ref": {
            "type": "string",
            "pattern": r"^\$[a-z][a-z0-9_]*$",
            "description": "a parameter of this rule, e.g. $course_gap",
        },
        "duration_or_parameter": {"oneOf": [ref("duration"), ref("parameter_ref")]},
        "anchor": {"enum": list(ANCHORS)},
        "time_point": {
            "oneOf": [
                ref("anchor"),
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["anchor"],
                    "properties": {"anchor": ref("anchor"), "plus": DURATION, "minus": DURATION},
                },
            ]
        },
        "window": {
            "oneOf": [
                {"type": "string", "description": "a window named under windows"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["last"],
                    "properties": {"last": DURATION},
                },
                {
                    "type": "object",
                    "additionalProperties": False,
                    "minProperties": 1,
                    "properties": {"start": ref("time_point"), "end": ref("time_point")},
                },
            ]
        },
        "threshold": {
            "oneOf": [{"type": "number"}, {"type": "string", "minLength": 1}],
            "description": "a number, a quantity such as '3 /[HPF]' or '1000 mg', a grade such as trace, a "
            "duration, or a $parameter",
        },
        "comparison": {"type": "object", "additionalProperties": False, "properties": dict(THRESHOLDS)},
        "data_key": {"type": "string", "description": "a key under data"},
        "data_keys": {"oneOf": [DATA_KEY, {"type": "array", "items": DATA_KEY, "minItems": 1}]},
        "value_test": VALUE_TEST_SCHEMA,
        "near": NEAR_SCHEMA,
        "where": WHERE_SCHEMA,
    }


def condition_schema() -> dict[str, Any]:
    """A condition: a name, all/any/not of conditions, or exactly one building block of the registry."""
    items = {"type": "array", "minItems": 1, "items": ref("condition")}
    return {
        "oneOf": [
            {"type": "string", "description": "the name of a condition of this rule"},
            _one("all", items),
            _one("any", items),
            _one("not", ref("condition")),
            *(_one(name, block.body_schema()) for name, block in BLOCKS.items()),
        ]
    }


PARAMETER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "default"],
    "properties": {
        "type": {"enum": ["duration", "quantity", "number", "ordinal", "boolean"]},
        "default": {"type": ["number", "string", "boolean"]},
        "unit": {"type": "string", "description": "UCUM unit (quantity parameters)"},
        "description": {"type": "string"},
    },
    "allOf": [{"if": {"properties": {"type": {"const": "quantity"}}}, "then": {"required": ["unit"]}}],
}

DATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["resources", "valueset"],
    "properties": {
        "resources": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(DATA_RESOURCES)}},
        "valueset": {"type": "string"},
        "lookback": DURATION,
        "unit": {"type": "string"},
        "molar_mass": {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": "g/mol, to compare mass and substance concentrations",
        },
        "body_weight": {"type": "string", "description": "data key of body weights, for mg/kg doses"},
        "history": {
            "type": "boolean",
            "description": "also read resolved, inactive and remission problems (default false: only current ones)",
        },
    },
}

SUGGESTION_ACTION = {
    "oneOf": [
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["type", "description", "resource"],
            "properties": {
                "type": {"const": "create"},
                "description": {"type": "string", "minLength": 1},
                "resource": {
                    "type": "object",
                    "required": ["resourceType"],
                    "properties": {"resourceType": {"type": "string"}},
                },
            },
        },
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["type", "description", "draft"],
            "properties": {
                "type": {"enum": ["update", "delete"]},
                "description": {"type": "string", "minLength": 1},
                "draft": DATA_KEY,
                "patch": {"type": "object", "description": "merged into the draft order (update only)"},
            },
        },
    ]
}

CARD = {
    "type": "object",
    "additionalProperties": False,
    "required": ["summary"],
    "properties": {
        "summary": {
            "type": "string",
            "minLength": 1,
            "description": "Jinja2 template; rendered under 140 characters",
        },
        "detail": {"type": "string", "description": "Markdown Jinja2 template; the evidence table is appended"},
        "selection": {"enum": ["any", "at-most-one"]},
        "suggestions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "label", "actions"],
                "properties": {
                    "id": {"type": "string", "pattern": "^[a-z][a-z0-9-]*$"},
                    "label": {"type": "string", "minLength": 1},
                    "recommended": {"type": "boolean"},
                    "tiers": {"type": "array", "items": INDICATOR, "minItems": 1},
                    "actions": {"type": "array", "minItems": 1, "items": SUGGESTION_ACTION},
                    "result_due_days": {"type": "integer", "minimum": 0, "maximum": 365,
                                        "description": "days until this suggestion's result is due; accepting it "
                                                       "holds the card until then (default 7)"},
                },
            },
        },
        "override_reasons": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["code", "display"],
                "properties": {
                    "code": {"type": "string", "pattern": "^[a-z][a-z0-9-]*$"},
                    "display": {"type": "string", "minLength": 1},
                    "system": {"type": "string", "format": "uri"},
                    "snooze_days": {"type": "integer", "minimum": 0, "maximum": 3650,
                                    "description": "days the rule stays quiet for the patient after an override "
                                                   "with this reason (default 30 info/warning, 7 critical; 0 never); "
                                                   "new evidence or a rising indicator breaks it"},
                },
            },
        },
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["label", "url"],
                "properties": {
                    "label": {"type": "string", "minLength": 1},
                    "url": {"type": "string", "pattern": "^https?://"},
                    "type": {"enum": ["absolute", "smart"]},
                    "app_context": {"type": "string"},
                },
            },
        },
    },
}

REFERENCE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "citation", "strength"],
    "properties": {
        "id": {"type": "string"},
        "citation": {"type": "string", "minLength": 1},
        "url": {"type": "string", "pattern": "^https?://"},
        "strength": {
            "enum": ["H", "M", "L", "VL", "H-M", "M-L", "L-M", "VL-L"],
            "description": "evidence strength per clinical.md",
        },
    },
}


def rule_schema() -> dict[str, Any]:
    """The whole rule schema (JSON Schema 2020-12)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://kbladder-cds.org/schema/rule.schema.json",
        "$comment": "Generated from cds_service/engine/schema/rule.py by `make schema`; edit that, not this.",
        "title": "kbladder-cds rule",
        "description": "One clinical decision rule. See docs/rules.md.",
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "version", "title", "status", "hooks", "data", "conditions", "tiers", "card", "references"],
        "properties": {
            "id": {
                "type": "string",
                "pattern": "^[A-Z][A-Z0-9]*-[0-9A-Za-z-]+$",
                "description": "stable id, e.g. KB-02",
            },
            "name": {"type": "string", "pattern": "^[a-z][a-z0-9-]*$"},
            "version": {
                "type": "string",
                "pattern": r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$",
                "description": "semantic version",
            },
            "title": {"type": "string", "minLength": 1},
            "status": {"enum": ["active", "silent", "retired"], "description": "silent: evaluated and logged, no card"},
            "hooks": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(HOOKS)}},
            "topic": {"type": "string", "description": "what the card is about (for precedence), e.g. urinary"},
            "description": {"type": "string"},
            "parameters": _keyed(ref("parameter")),
            "data": _keyed(ref("data"), minProperties=1),
            "course": {
                "type": "object",
                "additionalProperties": False,
                "required": ["exposure"],
                "properties": {"exposure": {"type": "array", "minItems": 1, "items": DATA_KEY}, "gap": DURATION},
            },
            "windows": _keyed(WINDOW),
            "conditions": _keyed(ref("condition"), minProperties=1),
            "tiers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["indicator", "when"],
                    "properties": {
                        "indicator": INDICATOR,
                        "when": ref("condition"),
                        "summary": {"type": "string", "minLength": 1},
                        "detail": {"type": "string", "minLength": 1},
                    },
                },
            },
            "card": CARD,
            "suppress_when": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["topic"],
                    "properties": {
                        "topic": {"type": "string"},
                        "indicators": {"type": "array", "items": INDICATOR, "minItems": 1},
                    },
                },
            },
            "references": {"type": "array", "minItems": 1, "items": REFERENCE},
        },
        "$defs": {"parameter": PARAMETER, "data": DATA, "condition": condition_schema(), **shared_defs()},
    }


def test_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The hand-written test schema with its ``hook`` enum taken from the hook table (one list of hooks)."""
    case = schema["properties"]["tests"]["items"]
    case["properties"]["hook"] = {"enum": list(HOOKS)}
    return schema
