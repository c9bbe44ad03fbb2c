"""Reading the OperationOutcome error bodies the service sends (CDS Hooks 3.0 ballot) in tests."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.operationoutcome import OperationOutcome


def error_issue(body: Any) -> dict[str, Any]:
    """The single issue of an error body, after checking the body is a valid FHIR R4 OperationOutcome."""
    assert isinstance(body, dict) and body.get("resourceType") == "OperationOutcome", body
    OperationOutcome.model_validate(body)
    (issue,) = body["issue"]
    return issue


def error_field(body: Any) -> str:
    """The field an error body names (its first ``expression``)."""
    return error_issue(body)["expression"][0]


def error_message(body: Any) -> str:
    """The message of an error body (``diagnostics``)."""
    return error_issue(body)["diagnostics"]
