"""The rule model: what a loaded, checked rule file becomes.

Everything here is immutable and compiled (parameters resolved with site overrides,
FHIRPath compiled, templates compiled), so evaluation does no parsing at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jinja2 import Template

from cds_service.clinical.facts import FactsCache
from cds_service.clinical.findings import ORDINAL_NAMES
from cds_service.clinical.timeutil import Duration
from cds_service.clinical.units import NO_ALIASES, UnitAliases
from cds_service.clinical.valueset import ValueSet

if TYPE_CHECKING:
    # Type-only, never imported at run time: a rule holds compiled condition nodes, and a node is
    # evaluated against a RuleContext that holds the rule (blocks/base.py ↔ context.py ↔ this module).
    from cds_service.engine.blocks.base import Node

INDICATORS = ("info", "warning", "critical")
SEVERITY = {name: rank for rank, name in enumerate(INDICATORS)}
MEDICATION_RESOURCES = frozenset({"MedicationAdministration", "MedicationRequest", "MedicationStatement"})


@dataclass(frozen=True, slots=True)
class Quantity:
    """A threshold with its UCUM unit (None for plain counts and scores without unit)."""

    value: float
    unit: str | None = None

    def __str__(self) -> str:
        return f"{self.value:g} {self.unit}" if self.unit else f"{self.value:g}"


@dataclass(frozen=True, slots=True)
class Ordinal:
    """A dipstick-style threshold (``trace`` = 0.5, ``1+`` = 1 …)."""

    value: float

    def __str__(self) -> str:
        return ORDINAL_NAMES.get(self.value, f"{self.value:g}")


@dataclass(frozen=True, slots=True)
class Parameter:
    """A tunable threshold or window; ``value`` is after the site override, if any."""

    name: str
    type: str  # duration | quantity | number | ordinal | boolean
    default: Any
    value: Any
    raw: Any
    unit: str | None = None
    description: str = ""
    overridden: bool = False


@dataclass(frozen=True, slots=True)
class DataRequirement:
    """Data a rule reads: resource types, a value set, a lookback. Prefetch is derived from it."""

    key: str
    resources: tuple[str, ...]
    valueset: ValueSet
    lookback: Duration | None
    unit: str | None = None
    molar_mass: float | None = None
    body_weight: str | None = None  # data key of body weights, for mg/kg doses
    history: bool = False  # also resolved, inactive and remission problems (a rule that asks for history)

    @property
    def is_medication(self) -> bool:
        return bool(MEDICATION_RESOURCES.intersection(self.resources))


@dataclass(frozen=True, slots=True)
class Anchor:
    """A point in time relative to the patient's data: ``course_start`` + or − a duration."""

    name: str
    offset: Duration | None = None
    sign: int = 1


@dataclass(frozen=True, slots=True)
class Window:
    """A time window [start, end]; a missing start is open, a missing end is ``now``."""

    label: str
    start: Anchor | None
    end: Anchor | None


@dataclass(frozen=True, slots=True)
class Course:
    """How courses are cut: which exposures count, and the gap that starts a new course."""

    exposure: tuple[str, ...]
    gap: Duration


@dataclass(frozen=True, slots=True)
class Tier:
    """An indicator level and the condition that reaches it; tiers are tried in order."""

    indicator: str
    when: Node
    summary: Template | None = None
    detail: Template | None = None


@dataclass(frozen=True, slots=True)
class Action:
    """A suggestion action: create a resource, or update/delete the matching draft order."""

    type: str
    description: str
    resource: Mapping[str, Any] | None = None
    draft: str | None = None  # data key whose draft orders the action targets
    patch: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Suggestion:
    key: str
    label: str
    actions: tuple[Action, ...]
    recommended: bool = False
    tiers: frozenset[str] = frozenset(INDICATORS)
    #: Days until the result of this suggestion (e.g. a urinalysis) is due: accepting it holds the card that long.
    result_due_days: int | None = None


@dataclass(frozen=True, slots=True)
class OverrideOption:
    """An override reason a rule offers on its cards (the wire model of a chosen one: cdshooks.OverrideReason)."""

    code: str
    display: str
    system: str
    #: Days the rule stays quiet for the patient after an override with this reason (None: the default for
    #: the card's indicator; 0: never snoozed). New evidence or a rising indicator always breaks a snooze.
    snooze_days: int | None = None


@dataclass(frozen=True, slots=True)
class Link:
    label: str
    url: str
    type: str = "absolute"
    app_context: str | None = None


@dataclass(frozen=True, slots=True)
class Reference:
    id: str
    citation: str
    strength: str
    url: str | None = None


@dataclass(frozen=True, slots=True)
class CardTemplate:
    summary: Template
    summary_source: str
    detail: Template | None
    suggestions: tuple[Suggestion, ...]
    selection: str
    override_reasons: tuple[OverrideOption, ...]
    links: tuple[Link, ...]


@dataclass(frozen=True, slots=True)
class Suppression:
    """Drop this rule's card when another card on ``topic`` fires at one of ``indicators``."""

    topic: str
    indicators: frozenset[str]


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    name: str
    version: str
    title: str
    status: str  # active | silent | retired
    hooks: tuple[str, ...]
    topic: str | None
    description: str
    parameters: Mapping[str, Parameter]
    data: Mapping[str, DataRequirement]
    course: Course | None
    windows: Mapping[str, Window]
    conditions: Mapping[str, Node]
    tiers: tuple[Tier, ...]
    card: CardTemplate
    references: tuple[Reference, ...]
    suppress_when: tuple[Suppression, ...]
    file: str

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A complete, valid set of rules with their value sets; swapped atomically on reload."""

    rules: tuple[Rule, ...]
    valuesets: Mapping[str, ValueSet]
    digest: str
    sources: tuple[str, ...] = ()
    ordinal_codes: Mapping[tuple[str, str], float] = field(default_factory=dict)
    unit_aliases: UnitAliases = NO_ALIASES  # unit strings labs write, per kind of result (rules/units/)
    #: What the engine derives from the rule set once and keeps with it (its compiled plan: engine/plan.py).
    compiled: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def record_options(self) -> dict[str, Any]:
        """What a PatientRecord needs from the rule set to read results: coded grades, lab unit strings, and
        the rule set's cache of per-resource facts across calls (clinical/facts.py)."""
        facts = self.compiled.get("facts")
        if facts is None:
            facts = self.compiled.setdefault("facts", FactsCache())
        return {"ordinal_codes": self.ordinal_codes, "unit_aliases": self.unit_aliases, "facts_cache": facts}

    @property
    def version(self) -> str:
        """A short content hash: two services with the same rule files report the same version."""
        return self.digest[:12]

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def for_hook(self, hook: str) -> list[Rule]:
        """Rules that run on ``hook`` (retired rules never run)."""
        return [r for r in self.rules if hook in r.hooks and r.status != "retired"]


def digest_of(chunks: Iterable[bytes]) -> str:
    """sha256 over the files that make a rule set, in a stable order."""
    hasher = hashlib.sha256()
    for chunk in chunks:
        hasher.update(hashlib.sha256(chunk).digest())
    return hasher.hexdigest()
