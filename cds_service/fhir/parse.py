"""Check FHIR R4 resources with fhir.resources (its R4B models read R4 data).

A malformed resource is skipped and reported — type, id and where it is wrong, never its
values (they may be PHI) — so one bad Observation never turns a hook call into a 500.
Pure: no network, used by the service and by ``kbladder rules test`` alike.

Validating with fhir.resources costs ~0.1-0.3 ms per resource (nested pydantic models), most of a hook
call's time. The outcome is a pure function of the resource's JSON, and an EHR sends the same resources on
patient-view, order-select and order-sign, so outcomes are cached by a digest of the resource's JSON as
given (16-byte BLAKE2b; keys in the order they came — an EHR serialises a resource the same way each time,
and the same content in another key order is only a cache miss, never a different answer, so the sort a
canonical form needs is not paid on every resource of every call): a resource seen before costs one
``orjson.dumps`` and a hash (docs/performance.md). Anything orjson cannot encode exactly (dates, other
Python objects, NaN — and, to be safe, any ``null``) is validated every time. The digest travels with the
valid resource (:class:`Checked`) to the other cache across calls, the record's facts.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from pydantic import ValidationError

from cds_service.clinical.timeutil import TimeError, parse_instant

#: Larger magnitudes are not clinical quantities; summed they could overflow a float (see _unreadable_value).
MAX_MAGNITUDE = 1e15
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_DATE_LIKE = re.compile(r"^\d{4}(-\d{2}(-\d{2}(T[0-9:.]+(Z|[+-]\d{2}:\d{2})?)?)?)?$")
#: FHIR date, dateTime and instant elements: effectiveDateTime, birthDate, effectiveInstant, ... and these.
_TIME_SUFFIXES = ("DateTime", "Date", "Instant")
_TIME_KEYS = frozenset({"issued", "start", "end", "date", "recorded", "authoredOn", "lastUpdated", "whenHandedOver",
                        "whenPrepared", "dateAsserted", "occurrenceDateTime", "onsetDateTime", "abatementDateTime"})

#: Validation outcomes kept (≈ 150 bytes each): a heavy patient has ~2,500 resources.
CACHE_SIZE = 50_000
_AS_GIVEN = (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
              | orjson.OPT_PASSTHROUGH_SUBCLASS)
_outcomes: OrderedDict[bytes, ParseProblem | None] = OrderedDict()
_outcomes_lock = threading.Lock()


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


class Checked(dict):  # type: ignore[type-arg]
    """A resource found valid, carrying the digest of its content (None: not cacheable).

    Caches across calls key on the digest — validation here, a record's per-resource facts in
    :class:`cds_service.clinical.facts.FactsCache` — so a resource costs one digest per call, not one per
    cache. It is a plain JSON object otherwise (orjson and json write it as one).
    """

    __slots__ = ("digest",)

    def __init__(self, resource: Mapping[str, Any], digest: bytes | None) -> None:
        super().__init__(resource)
        self.digest = digest


def check_resource(resource: Any) -> ParseProblem | None:
    """None when the resource is valid FHIR, else the problem (cached by content, see the module doc)."""
    return _check_keyed(resource)[0]


def _check_keyed(resource: Any) -> tuple[ParseProblem | None, bytes | None]:
    if type(resource) is Checked:
        return None, resource.digest  # checked already (a resource handed on within one call)
    key = _digest(resource)
    if key is not None:
        with _outcomes_lock:
            if key in _outcomes:
                _outcomes.move_to_end(key)
                return _outcomes[key], key
    problem = _check(resource)
    if key is not None:
        with _outcomes_lock:
            _outcomes[key] = problem
            if len(_outcomes) > CACHE_SIZE:
                _outcomes.popitem(last=False)
    return problem, key


def clear_cache() -> None:
    """Forget every cached outcome (benchmarks measure first sight with it)."""
    with _outcomes_lock:
        _outcomes.clear()


def _digest(resource: Any) -> bytes | None:
    """Digest of a plain JSON object's JSON, keys as given; None for anything else (then: no caching)."""
    if type(resource) is not dict:
        return None
    try:
        encoded = orjson.dumps(resource, option=_AS_GIVEN)
    except (TypeError, orjson.JSONEncodeError):
        return None
    if b"null" in encoded:  # orjson writes NaN and Infinity as null too: those must not share an outcome
        return None
    return hashlib.blake2b(encoded, digest_size=16).digest()


def _check(resource: Any) -> ParseProblem | None:
    if not isinstance(resource, Mapping):
        return ParseProblem("(not an object)", None, "entry is not a JSON object")
    rtype = resource.get("resourceType")
    rid = resource.get("id") if isinstance(resource.get("id"), str) else None
    if not isinstance(rtype, str):
        return ParseProblem("(no resourceType)", rid, "missing resourceType")
    if not _RESOURCE_TYPE.match(rtype):  # e.g. "\u001b": never a model name, and not safe to echo
        return ParseProblem("(invalid resourceType)", rid, "invalid resourceType")
    try:
        model = _model(rtype)
    except (KeyError, ValueError):
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
    where = _unreadable_value(resource, rtype)
    if where is not None:
        return ParseProblem(rtype, rid, f"unreadable value at {where}")
    return None


def _unreadable_value(value: Any, path: str) -> str | None:
    """Path of the first value valid FHIR yet unreadable here: a number that is not finite or beyond
    ±1e15 (sums of doses would overflow), or a date/time outside what the engine can compute with.

    WHY at this edge: one check makes every reader downstream safe, and the resource is then skipped and
    reported like any malformed one, so the rules that read its type are undecided, never silently clear.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, int | float):
        return None if math.isfinite(value) and abs(value) <= MAX_MAGNITUDE else path
    if isinstance(value, Mapping):
        for key, item in value.items():
            here = f"{path}.{key}"
            if isinstance(item, str):
                if _is_time_key(str(key)) and _DATE_LIKE.match(item):
                    try:
                        parse_instant(item)
                    except TimeError:
                        return here
                continue
            found = _unreadable_value(item, here)
            if found:
                return found
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                continue  # FHIR has no arrays of dates among the fields the engine reads
            found = _unreadable_value(item, f"{path}[{index}]")
            if found:
                return found
    return None


def _is_time_key(key: str) -> bool:
    return key.endswith(_TIME_SUFFIXES) or key in _TIME_KEYS


def parse_resources(resources: Iterable[Any]) -> tuple[list[dict[str, Any]], list[ParseProblem]]:
    """Split resources into valid ones (as :class:`Checked` dicts, with their digest) and reported problems."""
    valid: list[dict[str, Any]] = []
    problems: list[ParseProblem] = []
    for resource in resources:
        problem, key = _check_keyed(resource)
        if problem is None:
            valid.append(resource if type(resource) is Checked else Checked(resource, key))
        else:
            problems.append(problem)
    return valid, problems


def bundle_resources(bundle: Mapping[str, Any]) -> list[Any]:
    """Resources of a Bundle's entries (or the resource itself if it is not a Bundle)."""
    if bundle.get("resourceType") != "Bundle":
        return [bundle]
    entries = bundle.get("entry")
    return [e.get("resource") for e in (entries if isinstance(entries, list) else [])
            if isinstance(e, Mapping) and e.get("resource")]
