"""Check FHIR R4 resources with fhir.resources (its R4B models read R4 data).

A malformed resource is skipped and reported — type, id and where it is wrong, never its
values (they may be PHI) — so one bad Observation never turns a hook call into a 500.
Pure: no network, used by the service and by ``kbladder rules test`` alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import ValidationError


@dataclass(frozen=True, slots=True)
class ParseProblem:
    """A resource that was skipped, and why (no data values)."""

    resource_type: str
    resource_id: str | None
    message: str

    def __str__(self) -> str:
        ident = f"{self.resource_type}/{self.resource_id}" if self.resource_id else self.resource_type
        return f"{ident} skipped: {self.message}"


@lru_cache(maxsize=64)
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def check_resource(resource: Any) -> ParseProblem | None:
    """None when the resource is valid FHIR, else the problem."""
    if not isinstance(resource, Mapping):
        return ParseProblem("(not an object)", None, "entry is not a JSON object")
    rtype = resource.get("resourceType")
    rid = resource.get("id") if isinstance(resource.get("id"), str) else None
    if not isinstance(rtype, str):
        return ParseProblem("(no resourceType)", rid, "missing resourceType")
    try:
        model = _model(rtype)
    except KeyError:
        return ParseProblem(rtype, rid, "unknown resource type")
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function")) or rtype
        kind = first.get("type", "invalid")
        return ParseProblem(rtype, rid, f"invalid at {where} ({kind}); {exc.error_count()} error(s)")
    except Exception as exc:  # the models can raise plain errors on odd input
        return ParseProblem(rtype, rid, f"invalid ({type(exc).__name__})")
    return None


def parse_resources(resources: Iterable[Any]) -> tuple[list[dict[str, Any]], list[ParseProblem]]:
    """Split resources into valid ones (as plain dicts) and reported problems."""
    valid: list[dict[str, Any]] = []
    problems: list[ParseProblem] = []
    for resource in resources:
        problem = check_resource(resource)
        if problem is None:
            valid.append(dict(resource))
        else:
            problems.append(problem)
    return valid, problems


def bundle_resources(bundle: Mapping[str, Any]) -> list[Any]:
    """Resources of a Bundle's entries (or the resource itself if it is not a Bundle)."""
    if bundle.get("resourceType") != "Bundle":
        return [bundle]
    return [e.get("resource") for e in bundle.get("entry") or [] if isinstance(e, Mapping) and e.get("resource")]
