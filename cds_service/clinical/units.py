"""UCUM-aware unit conversion.

Parsing is delegated to `ucumvert` (a UCUM grammar on top of pint); we only add the
spellings of general units that real EHR data carries (``mcg``, ``hr``) and cache one conversion
factor per unit pair, so a hot path never parses a unit string twice.

Unit strings that only mean something for one kind of result ("RBC/HPF" for a red-cell count,
"mL/min/1.73m2" for an eGFR) are not guessed here: they live in the rule set's unit-alias table
(``rules/units.yaml``, :class:`UnitAliases`), applied only to results of that kind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

UCUM_SYSTEM = "http://unitsofmeasure.org"

# Spellings seen in EHR data that are not UCUM, mapped to their UCUM code.
_ALIASES: dict[str, str] = {
    "mcg": "ug",
    "µg": "ug",
    "μg": "ug",
    "hr": "h",
    "hrs": "h",
    "hour": "h",
    "hours": "h",
    "mins": "min",
    "minute": "min",
    "minutes": "min",
    "sec": "s",
    "day": "d",
    "days": "d",
    "ml": "mL",
    "l": "L",
    "dl": "dL",
    "kgs": "kg",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "units/l": "U/L",
    "iu/l": "[IU]/L",
}
_ALIAS_PART = re.compile(r"(?<![A-Za-z\[])(mcg|µg|μg|hr)(?![A-Za-z\]])")


class UnitError(ValueError):
    """A unit that is not UCUM, or two units that measure different things."""


def normalize_unit(unit: str) -> str:
    """Return the UCUM code for a unit as EHRs write it (``mcg/kg/min`` -> ``ug/kg/min``)."""
    text = unit.strip()
    alias = _ALIASES.get(text) or _ALIASES.get(text.lower())
    if alias:
        return alias
    return _ALIAS_PART.sub(lambda m: _ALIASES[m.group(1)], text)


@lru_cache(maxsize=1)
def _registry() -> Any:
    # Imported lazily: building the registry takes ~0.4 s and most CLI commands never need it.
    from ucumvert import PintUcumRegistry

    return PintUcumRegistry()


@lru_cache(maxsize=4096)
def _parse(code: str) -> Any:
    try:
        return _registry().from_ucum(code)
    except Exception as exc:  # ucumvert raises lark/pint errors of several kinds
        raise UnitError(f"not a UCUM unit: {code!r}") from exc


def is_ucum(unit: str, *, strict: bool = False) -> bool:
    """True when ``unit`` parses as UCUM; ``strict`` refuses EHR aliases (rule files must write UCUM)."""
    try:
        _parse(unit if strict else normalize_unit(unit))
    except UnitError:
        return False
    return True


def factor(from_unit: str, to_unit: str) -> float:
    """Multiplier taking a value in ``from_unit`` to ``to_unit``; UnitError if incompatible."""
    result = _factor(from_unit, to_unit)
    if isinstance(result, UnitError):
        raise UnitError(*result.args) from result.__cause__
    return result


@lru_cache(maxsize=4096)
def _factor(from_unit: str, to_unit: str) -> float | UnitError:
    """:func:`factor`, failures cached too: "mg/kg" → "mg" is asked on every weight-based dose and parsing
    UCUM to find it impossible costs ~0.2 ms (lru_cache does not cache raised exceptions)."""
    try:
        src, dst = normalize_unit(from_unit), normalize_unit(to_unit)
        if src == dst:
            return 1.0
        a, b = _parse(src), _parse(dst)
    except UnitError as exc:
        return exc
    try:
        return float((1 * a).to(b).magnitude)
    except Exception as exc:
        error = UnitError(f"cannot convert {from_unit!r} to {to_unit!r}")
        error.__cause__ = exc
        return error


def convertible(from_unit: str, to_unit: str) -> bool:
    """True when a value in ``from_unit`` can be expressed in ``to_unit``."""
    try:
        factor(from_unit, to_unit)
    except UnitError:
        return False
    return True


def convert(value: float, from_unit: str, to_unit: str, *, molar_mass: float | None = None) -> float:
    """Convert ``value``; ``molar_mass`` (g/mol) bridges mass and substance concentrations.

    Creatinine in mg/dL and umol/L is the case that needs it: UCUM alone cannot cross
    from mass to amount of substance.
    """
    try:
        return value * factor(from_unit, to_unit)
    except UnitError:
        if molar_mass is None:
            raise
    # mass -> substance: value[g/L] / molar_mass[g/mol] = value[mol/L]; and the reverse.
    if convertible(from_unit, "g/L") and convertible(to_unit, "mol/L"):
        return value * factor(from_unit, "g/L") / molar_mass * factor("mol/L", to_unit)
    if convertible(from_unit, "mol/L") and convertible(to_unit, "g/L"):
        return value * factor(from_unit, "mol/L") * molar_mass * factor("g/L", to_unit)
    raise UnitError(f"cannot convert {from_unit!r} to {to_unit!r}")


def quantity_unit(quantity: dict[str, Any]) -> str | None:
    """The unit of a FHIR Quantity: the UCUM ``code`` when coded in UCUM, else the free-text ``unit``."""
    code = quantity.get("code")
    if code and quantity.get("system", UCUM_SYSTEM) == UCUM_SYSTEM:
        return str(code)
    unit = quantity.get("unit") or code
    return str(unit) if unit else None


_SPACE = re.compile(r"\s+")


def alias_key(unit: str) -> str:
    """How an alias is looked up: case and spacing as labs vary them do not matter, nothing else is loosened."""
    return _SPACE.sub(" ", unit.strip()).lower()


@dataclass(frozen=True, slots=True)
class UnitAliases:
    """Per kind of result (the UCUM unit a rule compares it in), the unit strings labs write for that unit.

    "RBC/HPF", "cells/HPF" and "per HPF" all mean ``/[HPF]`` when the LOINC code already fixes the
    property (a count per high-power field); the same strings say nothing for any other kind of result.
    A string is read only when it is in the table for the kind asked about: never a guess beyond it.
    """

    kinds: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def resolve(self, unit: str | None, kind: str | None) -> str | None:
        """``kind`` when ``unit`` is one of its aliases; else ``unit`` unchanged."""
        if unit is None or kind is None:
            return unit
        aliases = self.kinds.get(kind)
        if aliases and alias_key(unit) in aliases:
            return kind
        return unit

    def merged(self, additions: Mapping[str, Iterable[str]]) -> UnitAliases:
        """This table with more aliases (a site's), kind by kind."""
        kinds = dict(self.kinds)
        for kind, aliases in additions.items():
            kinds[kind] = kinds.get(kind, frozenset()) | {alias_key(a) for a in aliases}
        return UnitAliases(kinds)


NO_ALIASES = UnitAliases()


def unit_alias_problems(table: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """(path, message) for every problem of a unit-alias table ``{kind: [alias, ...]}``."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if not isinstance(table, Mapping):
        return [((), "the unit-alias table must map a UCUM unit to a list of the unit strings labs write for it")]
    for kind, aliases in table.items():
        if not isinstance(kind, str) or not is_ucum(kind, strict=True):
            problems.append(((str(kind),), f"kind {kind!r} is not a UCUM unit"))
            continue
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
            problems.append(((kind,), "aliases must be a list of non-empty strings"))
    return problems


def unit_aliases_of(table: Mapping[str, Iterable[str]]) -> UnitAliases:
    """A checked table (see :func:`unit_alias_problems`) as :class:`UnitAliases`."""
    return NO_ALIASES.merged(table)
