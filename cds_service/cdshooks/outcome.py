"""Error bodies as FHIR R4 OperationOutcome (CDS Hooks 3.0 ballot: a non-2xx response SHOULD carry one).

The information is what the service has always reported: the JSON path of the offending field goes to
``issue[].expression``, the message to ``issue[].diagnostics``, and the HTTP status stays the status.
The issue ``code`` comes from the FHIR IssueType value set, chosen from the status so that a FHIR-aware
client can act on it without parsing text. Messages never quote submitted values (PHI, access tokens).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["ISSUE_CODES", "issue_code", "operation_outcome"]

#: HTTP status → FHIR IssueType (http://hl7.org/fhir/R4/valueset-issue-type.html).
ISSUE_CODES: dict[int, str] = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    412: "processing",  # the 3.0 ballot's own example of a 412 body
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    429: "throttled",
    500: "exception",
    503: "transient",
    504: "timeout",
}


def issue_code(status: int, message: str = "") -> str:
    """The IssueType for *status* (``required`` for a missing field, since that is what the client must fix)."""
    if status == 400 and message == "is required":
        return "required"
    return ISSUE_CODES.get(status, "exception" if status >= 500 else "processing")


def operation_outcome(status: int, message: str, *, expression: Iterable[str] = (),
                      details: str | None = None) -> dict[str, Any]:
    """One-issue OperationOutcome for an error with HTTP *status*.

    *expression* lists the JSON paths of the fields at fault (``context.patientId``, ``prefetch.patient``);
    *details* is a longer human explanation (``issue.details.text``) when there is one.
    """
    issue: dict[str, Any] = {
        "severity": "fatal" if status >= 500 else "error",
        "code": issue_code(status, message),
    }
    if details:
        issue["details"] = {"text": details}
    issue["diagnostics"] = message
    paths = [p for p in expression if p]
    if paths:
        issue["expression"] = paths
    return {"resourceType": "OperationOutcome", "issue": [issue]}
