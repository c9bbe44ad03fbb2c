"""Load rule files into a RuleSet — all of it, or a list of problems, never half.

Three passes, each reporting every problem it finds with ``file:line:col``: the JSON
Schema (structure, the same schema editors use for completion), then meaning (value sets,
code systems, units, parameters, FHIRPath, templates, windows, unreachable tiers), then
the set as a whole (duplicate ids, precedence topics). A site file may override any
parameter without editing the rule, and add its local codes to any value set.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema
from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment

from cds_service.clinical.findings import ordinal_of_text
from cds_service.clinical.timeutil import TimeError, parse_duration
from cds_service.clinical.units import (
    NO_ALIASES,
    UnitAliases,
    UnitError,
    convert,
    is_ucum,
    normalize_unit,
    unit_alias_problems,
)
from cds_service.clinical.valueset import (
    CODE_FORMATS,
    KNOWN_SYSTEMS,
    PROJECT,
    Concept,
    ValueSet,
    canonical_system,
)
from cds_service.engine.blocks.base import Node
from cds_service.engine.blocks.logic import compile_condition, implies
from cds_service.engine.context import ANCHORS
from cds_service.engine.display import display
from cds_service.engine.fhirpath import FhirPath, syntax_errors
from cds_service.engine.model import (
    INDICATORS,
    MEDICATION_RESOURCES,
    Action,
    Anchor,
    CardTemplate,
    Course,
    DataRequirement,
    Link,
    Ordinal,
    OverrideOption,
    Parameter,
    Quantity,
    Reference,
    Rule,
    RuleSet,
    Suggestion,
    Suppression,
    Tier,
    Window,
    digest_of,
)
from cds_service.engine.plan import plan_of
from cds_service.engine.schema import load_schema
from cds_service.engine.yamlpos import Located, Path_, Problem, YamlError, load_file

OVERRIDE_SYSTEM = "https://kbladder-cds.org/fhir/CodeSystem/override-reason"
TEMPLATE_NAMES = frozenset({"rule", "params", "cond", "holds", "course", "tier", "hook"})
RULE_FILE_SUFFIXES = (".yaml", ".yml")


@dataclass(slots=True)
class LoadResult:
    """Either a complete rule set, or the problems that stopped it (warnings travel with both)."""

    ruleset: RuleSet | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return self.ruleset is not None


def schema_problems(located: Located, schema_name: str) -> list[Problem]:
    """Every schema violation of a document, at the line of the offending value or key."""
    return schema_check(located, schema_name)[0]


def schema_check(located: Located, schema_name: str) -> tuple[list[Problem], bool]:
    """(problems, structural): unknown keys are reported but do not stop the checks of meaning."""
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    problems = []
    structural = False
    for error in sorted(validator.iter_errors(located.data), key=lambda e: list(map(str, e.absolute_path))):
        error, siblings = _meant(error)
        path: Path_ = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            # Keys that any branch of a oneOf accepts here: ``cuont:`` should suggest ``count``.
            allowed = {
                key
                for other in siblings
                if other.validator == "additionalProperties" and other.absolute_path == error.absolute_path
                for key in other.schema.get("properties", {})
            }
            patterns = error.schema.get("patternProperties", {})
            unknown = [k for k in error.instance if k not in allowed and not any(re.match(p, k) for p in patterns)]
            for key in unknown:
                problems.append(located.problem((*path, key), f"unknown key {key!r}{_closest(key, allowed)}", key=True))
            if unknown:
                continue
        structural = True
        where = ".".join(map(str, path)) or "document"
        problems.append(located.problem(path, f"{where}: {error.message}"))
    return problems, structural


_WEAK = ("type", "required")


def _meant(error: jsonschema.ValidationError) -> tuple[jsonschema.ValidationError, list[jsonschema.ValidationError]]:
    """Inside a oneOf/anyOf, the error of the branch the author meant (it got deepest), and its siblings.

    A typo inside ``count:`` fails every branch of a condition; the count branch's error lies
    deeper in the document, while "is not of type 'string'" (the name branch) helps nobody.
    """
    siblings = [error]
    while error.context:
        siblings = list(error.context)
        error = max(
            siblings,
            key=lambda e: (len(e.absolute_path), e.validator == "additionalProperties", e.validator not in _WEAK),
        )
    return error, siblings


def _closest(word: str, options: Iterable[str]) -> str:
    near = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


# ---------------------------------------------------------------- value sets


def load_valuesets(directory: Path, problems: list[Problem]) -> tuple[dict[str, ValueSet], list[bytes]]:
    """Every value set of a folder; problems are appended, bad files skipped."""
    found: dict[str, ValueSet] = {}
    chunks: list[bytes] = []
    if not directory.is_dir():
        return found, chunks
    for path in sorted(p for p in directory.iterdir() if p.suffix in RULE_FILE_SUFFIXES):
        try:
            located = load_file(path)
        except YamlError as exc:
            problems.append(exc.problem)
            continue
        chunks.append(path.read_bytes())
        errors = schema_problems(located, "valueset")
        problems.extend(errors)
        if errors:
            continue
        data = located.data
        concepts: dict[tuple[str, str], Concept] = {}
        for i, raw in enumerate(data.get("concepts") or []):
            system = canonical_system(raw["system"])
            code = str(raw["code"])
            here = ("concepts", i)
            if system not in KNOWN_SYSTEMS:
                problems.append(
                    located.problem(
                        (*here, "system"), f"unknown code system {system!r}; known: " + ", ".join(sorted(KNOWN_SYSTEMS))
                    )
                )
            elif not CODE_FORMATS.get(system, _ANY).match(code):
                problems.append(located.problem((*here, "code"), f"{code!r} is not a valid code of {system}"))
            if (system, code) in concepts:
                problems.append(located.problem(here, f"duplicate concept {system}|{code}"))
            if system == PROJECT and not raw.get("source"):
                problems.append(located.problem(here, "a project-local code needs a source (its definition)"))
            concepts[(system, code)] = Concept(
                system, code, raw["display"], raw.get("source", ""), raw.get("kind"), _ordinal(raw.get("ordinal"))
            )
        vs_id = data["id"]
        if vs_id in found:
            problems.append(located.problem(("id",), f"duplicate value set id {vs_id!r}"))
        found[vs_id] = ValueSet(
            vs_id, data.get("title", vs_id), concepts, tuple(data.get("text") or ()), data.get("substance")
        )
    return found, chunks


class _Any:
    @staticmethod
    def match(_: str) -> bool:
        return True


_ANY = _Any()


def _ordinal(raw: Any) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, int | float):
        return float(raw)
    return ordinal_of_text(str(raw))


# ---------------------------------------------------------------- parameters


def _parse_parameter(name: str, raw: Mapping[str, Any], value_raw: Any) -> Any:
    """Typed value of a parameter (default or override); ValueError with a readable reason."""
    kind = raw["type"]
    if kind == "duration":
        try:
            return parse_duration(str(value_raw))
        except TimeError as exc:
            raise ValueError(str(exc)) from exc
    if kind == "quantity":
        unit = raw.get("unit")
        if isinstance(value_raw, bool) or not isinstance(value_raw, int | float | str):
            raise ValueError(f"{name} must be a number in {unit}")
        if isinstance(value_raw, str):
            number, given = _split_quantity(value_raw)
            try:
                return Quantity(convert(number, given, unit), unit) if unit else Quantity(number, given)
            except UnitError as exc:
                raise ValueError(f"{name}: {exc}") from exc
        return Quantity(float(value_raw), unit)
    if kind == "number":
        if isinstance(value_raw, bool) or not isinstance(value_raw, int | float):
            raise ValueError(f"{name} must be a number")
        return float(value_raw)
    if kind == "ordinal":
        grade = _ordinal(value_raw)
        if grade is None:
            raise ValueError(f"{name} must be a grade: negative, trace, 1+, 2+, 3+, 4+")
        return Ordinal(grade)
    if kind == "boolean":
        if not isinstance(value_raw, bool):
            raise ValueError(f"{name} must be true or false")
        return value_raw
    raise ValueError(f"unknown parameter type {kind!r}")


def _split_quantity(text: str) -> tuple[float, str]:
    number, _, unit = text.strip().partition(" ")
    try:
        return float(number), normalize_unit(unit.strip())
    except ValueError as exc:
        raise ValueError(f"not a quantity (number and unit, e.g. '35 mg'): {text!r}") from exc


# ---------------------------------------------------------------- one rule


class RuleCompiler:
    """Compiles one checked rule document; implements ``conditions.Scope``."""

    def __init__(
        self,
        located: Located,
        valuesets: Mapping[str, ValueSet],
        overrides: Mapping[str, Any],
        site: Located | None,
        site_path: Path_,
    ) -> None:
        self.located = located
        self.doc: dict[str, Any] = located.data
        self.valuesets = valuesets
        self.overrides = overrides
        self.site = site
        self.site_path = site_path
        self.problems: list[Problem] = []
        self.parameters: dict[str, Parameter] = {}
        self.used_parameters: set[str] = set()
        self.data_reqs: dict[str, DataRequirement] = {}
        self.windows: dict[str, Window] = {}
        self.broken_windows: set[str] = set()  # declared, but invalid (already reported where declared)
        self.condition_names = set((self.doc.get("conditions") or {}).keys())
        # finalize: every value a template prints goes through the one display filter (rounding, units).
        self.env = SandboxedEnvironment(
            undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True, finalize=display
        )

    # Scope ---------------------------------------------------------
    def problem(self, path: Path_, message: str, severity: str = "error") -> None:
        self.problems.append(self.located.problem(path, message, severity=severity))

    def is_condition(self, name: str) -> bool:
        return name in self.condition_names

    def value(self, raw: Any, path: Path_, kinds: tuple[str, ...]) -> Any:
        if isinstance(raw, str) and raw.startswith("$"):
            name = raw[1:]
            parameter = self.parameters.get(name)
            if parameter is None:
                if name not in (self.doc.get("parameters") or {}):  # declared but invalid: reported where declared
                    self.problem(path, f"unknown parameter {raw!r}{_closest(name, self.parameters)}")
                return None
            self.used_parameters.add(name)
            if parameter.type not in kinds:
                self.problem(path, f"parameter {raw} is a {parameter.type}; expected {' or '.join(kinds)}")
                return None
            return parameter.value
        if isinstance(raw, bool) or raw is None:
            self.problem(path, f"expected {' or '.join(kinds)}, got {raw!r}")
            return None
        if isinstance(raw, int | float):
            if "number" in kinds:
                return float(raw)
            if "quantity" in kinds:
                return Quantity(float(raw), None)
            self.problem(path, f"expected {' or '.join(kinds)} (with a unit), got a bare number {raw!r}")
            return None
        text = str(raw)
        if "duration" in kinds and text.startswith("P"):
            try:
                return parse_duration(text)
            except TimeError as exc:
                self.problem(path, str(exc))
                return None
        if "ordinal" in kinds and ordinal_of_text(text) is not None:
            return Ordinal(ordinal_of_text(text))  # type: ignore[arg-type]
        if "quantity" in kinds:
            try:
                number, unit = _split_quantity(text)
            except ValueError as exc:
                self.problem(path, str(exc))
                return None
            if not is_ucum(unit, strict=True):
                self.problem(path, f"unit {unit!r} is not UCUM")
                return None
            return Quantity(number, unit)
        self.problem(path, f"expected {' or '.join(kinds)}, got {text!r}")
        return None

    def data(self, key: Any, path: Path_, *, medication: bool | None = None) -> DataRequirement | None:
        data = self.data_reqs.get(str(key)) if key is not None else None
        if data is None:
            if key is None:
                self.problem(path, "needs data: the key of an entry under data")
            elif str(key) not in (self.doc.get("data") or {}):
                self.problem(path, f"unknown data {key!r}{_closest(str(key), self.doc.get('data') or {})}")
            return None
        if medication is True and not data.is_medication:
            self.problem(path, f"data {key!r} is not medication data (MedicationAdministration/Request/Statement)")
            return None
        if medication is False and data.is_medication:
            self.problem(path, f"data {key!r} is medication data; this block reads observations or conditions")
            return None
        return data

    def window(self, raw: Any, path: Path_, *, allow_current: bool = False) -> Window | None:
        if raw is None:
            return None
        if isinstance(raw, str):
            window = self.windows.get(raw)
            if window is None and raw not in self.broken_windows:
                self.problem(path, f"unknown window {raw!r}{_closest(raw, self.windows)}")
            return window
        if not isinstance(raw, Mapping):
            self.problem(path, "a window is a name, {last: P90D}, or {start: …, end: …}")
            return None
        if "last" in raw:
            length = self.value(raw["last"], (*path, "last"), ("duration",))
            if length is None:
                return None
            return Window(f"last {raw['last']}", Anchor("now", length, -1), None)
        start = self._anchor(raw.get("start"), (*path, "start"), allow_current) if "start" in raw else None
        end = self._anchor(raw.get("end"), (*path, "end"), allow_current) if "end" in raw else None
        label = f"{_anchor_text(raw.get('start'))} → {_anchor_text(raw.get('end', 'now'))}"
        return Window(label, start, end)

    def _anchor(self, raw: Any, path: Path_, allow_current: bool) -> Anchor | None:
        if isinstance(raw, str):
            raw = {"anchor": raw}
        name = raw.get("anchor") if isinstance(raw, Mapping) else None
        if name not in ANCHORS or (name == "current" and not allow_current):
            allowed = [a for a in ANCHORS if a != "current" or allow_current]
            self.problem(path, f"unknown anchor {name!r}; one of {', '.join(allowed)}")
            return None
        for sign, word in ((1, "plus"), (-1, "minus")):
            if word in raw:
                offset = self.value(raw[word], (*path, word), ("duration",))
                return Anchor(name, offset, sign) if offset is not None else None
        return Anchor(name)

    def valueset(self, raw: Any, path: Path_) -> ValueSet | None:
        found = self.valuesets.get(str(raw))
        if found is None:
            self.problem(path, f"unknown value set {raw!r}{_closest(str(raw), self.valuesets)}")
        return found

    def fhirpath(self, raw: Any, path: Path_) -> FhirPath | None:
        if not isinstance(raw, str) or not raw.strip():
            self.problem(path, "FHIRPath expression must be a non-empty string")
            return None
        errors = syntax_errors(raw)
        for row, column, message in errors:
            line, col = self.located.text_at(path, row, column)
            short = message if len(message) < 160 else message[:157] + "…"
            self.problems.append(Problem(self.located.file, line, col, f"FHIRPath: {short}"))
        variables = set(_fhirpath_variables(raw))
        self.used_parameters |= variables & set(self.parameters)
        for name in sorted(
            variables
            - set(self.doc.get("parameters") or {})
            - {"now", "hook", "ucum", "context", "resource", "rootResource"}
        ):
            self.problem(path, f"FHIRPath variable %{name} is neither a parameter, %now nor %hook")
        return None if errors else FhirPath.compile(raw)

    # Compile -------------------------------------------------------
    def compile(self) -> Rule | None:
        doc = self.doc
        self._parameters()
        self._data()
        for name, raw in (doc.get("windows") or {}).items():
            window = self.window(raw, ("windows", name))
            if window is not None:
                self.windows[name] = Window(name, window.start, window.end)
            else:
                self.broken_windows.add(name)
        course = self._course()
        compiled: dict[str, Node] = {}
        for name, raw in (doc.get("conditions") or {}).items():
            node = compile_condition(raw, ("conditions", name), self)
            if node is not None:
                compiled[name] = node
        self._check_cycles(doc.get("conditions") or {})
        tiers = self._tiers()
        card = self._card()
        self._check_usage(doc, tiers)
        if any(p.severity == "error" for p in self.problems) or card is None:
            return None
        return Rule(
            id=doc["id"],
            name=doc.get("name", doc["id"]),
            version=doc["version"],
            title=doc["title"],
            status=self.overrides.get("status", doc["status"]),
            hooks=tuple(doc["hooks"]),
            topic=doc.get("topic"),
            description=doc.get("description", "").strip(),
            parameters=self.parameters,
            data=self.data_reqs,
            course=course,
            windows=self.windows,
            conditions=compiled,
            tiers=tiers,
            card=card,
            references=tuple(
                Reference(r["id"], r["citation"], r["strength"], r.get("url")) for r in doc.get("references") or []
            ),
            suppress_when=tuple(
                Suppression(s["topic"], frozenset(s.get("indicators", ["warning", "critical"])))
                for s in doc.get("suppress_when") or []
            ),
            file=self.located.file,
        )

    def _parameters(self) -> None:
        overrides = self.overrides.get("parameters") or {}
        declared = self.doc.get("parameters") or {}
        for name, raw in declared.items():
            path = ("parameters", name)
            if raw["type"] == "quantity" and raw.get("unit") and not is_ucum(raw["unit"], strict=True):
                self.problem((*path, "unit"), f"unit {raw['unit']!r} is not UCUM")
                continue
            try:
                default = _parse_parameter(name, raw, raw["default"])
            except ValueError as exc:
                self.problem((*path, "default"), str(exc))
                continue
            value, overridden = default, name in overrides
            if overridden:
                try:
                    value = _parse_parameter(name, raw, overrides[name])
                except ValueError as exc:
                    self._site_problem((*self.site_path, "parameters", name), f"{self.doc['id']}: {exc}")
            self.parameters[name] = Parameter(
                name,
                raw["type"],
                default,
                value,
                raw["default"],
                raw.get("unit"),
                raw.get("description", ""),
                overridden,
            )
        for name in overrides:
            if name not in declared:
                self._site_problem(
                    (*self.site_path, "parameters", name),
                    f"{self.doc['id']} has no parameter {name!r}{_closest(name, declared)}",
                )

    def _site_problem(self, path: Path_, message: str) -> None:
        target = self.site or self.located
        self.problems.append(target.problem(path, message, key=True))

    def _data(self) -> None:
        for key, raw in (self.doc.get("data") or {}).items():
            path = ("data", key)
            valueset = self.valueset(raw["valueset"], (*path, "valueset"))
            lookback = self.value(raw["lookback"], (*path, "lookback"), ("duration",)) if "lookback" in raw else None
            unit = raw.get("unit")
            if unit and not is_ucum(unit, strict=True):
                self.problem((*path, "unit"), f"unit {unit!r} is not UCUM")
            if valueset is not None:
                self.data_reqs[key] = DataRequirement(
                    key,
                    tuple(raw["resources"]),
                    valueset,
                    lookback,
                    unit,
                    raw.get("molar_mass"),
                    raw.get("body_weight"),
                    bool(raw.get("history", False)),
                )
        for key, data in self.data_reqs.items():
            if data.body_weight and (
                data.body_weight not in self.data_reqs or self.data_reqs[data.body_weight].resources != ("Observation",)
            ):
                self.problem(
                    ("data", key, "body_weight"), f"body_weight must name Observation data, not {data.body_weight!r}"
                )
            if data.is_medication and set(data.resources) - MEDICATION_RESOURCES:
                self.problem(("data", key, "resources"), "do not mix medication and other resources in one data entry")

    def _course(self) -> Course | None:
        raw = self.doc.get("course")
        if raw is None:
            return None
        keys = []
        for i, key in enumerate(raw.get("exposure") or []):
            data = self.data(key, ("course", "exposure", i), medication=True)
            if data is not None:
                keys.append(data.key)
        gap = self.value(raw.get("gap", "P28D"), ("course", "gap"), ("duration",))
        return Course(tuple(keys), gap) if gap is not None else None

    def _check_cycles(self, raw_conditions: Mapping[str, Any]) -> None:
        graph = {name: set(_names_in(raw)) & self.condition_names for name, raw in raw_conditions.items()}
        for start in graph:
            stack, seen = [(start, [start])], set()
            while stack:
                node, trail = stack.pop()
                for nxt in graph.get(node, ()):
                    if nxt == start:
                        self.problem(("conditions", start), "condition refers to itself: " + " → ".join([*trail, nxt]))
                        stack = []
                        break
                    if nxt not in seen:
                        seen.add(nxt)
                        stack.append((nxt, [*trail, nxt]))

    def _tiers(self) -> tuple[Tier, ...]:
        tiers: list[Tier] = []
        for i, raw in enumerate(self.doc.get("tiers") or []):
            path = ("tiers", i)
            when = compile_condition(raw["when"], (*path, "when"), self)
            summary = self._template(raw.get("summary"), (*path, "summary"))
            detail = self._template(raw.get("detail"), (*path, "detail"))
            if when is None:
                continue
            for j, earlier in enumerate(tiers):
                if implies(when, earlier.when):
                    self.problem(
                        (*path, "when"),
                        f"unreachable tier ({raw['indicator']}): whenever it holds, "
                        f"tier {j + 1} ({earlier.indicator}) holds too and is tried first",
                    )
            tiers.append(Tier(raw["indicator"], when, summary, detail))
        return tuple(tiers)

    def _template(self, source: Any, path: Path_) -> Any:
        if source is None:
            return None
        try:
            ast = self.env.parse(source)
        except TemplateSyntaxError as exc:
            line, col = self.located.text_at(path, exc.lineno or 1)
            self.problems.append(Problem(self.located.file, line, col, f"template: {exc.message}"))
            return None
        for name in sorted(meta.find_undeclared_variables(ast) - TEMPLATE_NAMES):
            self.problem(
                path, f"template uses unknown variable {name!r}; available: {', '.join(sorted(TEMPLATE_NAMES))}"
            )
        return self.env.from_string(source)

    def _card(self) -> CardTemplate | None:
        raw = self.doc["card"]
        summary = self._template(raw["summary"], ("card", "summary"))
        detail = self._template(raw.get("detail"), ("card", "detail"))
        suggestions = tuple(
            self._suggestion(item, ("card", "suggestions", i)) for i, item in enumerate(raw.get("suggestions") or [])
        )
        keys = [s.key for s in suggestions]
        for key in {k for k in keys if keys.count(k) > 1}:
            self.problem(("card", "suggestions"), f"duplicate suggestion id {key!r}")
        site_snooze = self.overrides.get("snooze") or {}
        reasons = tuple(
            OverrideOption(r["code"], r["display"], r.get("system", OVERRIDE_SYSTEM),
                           site_snooze.get(r["code"], r.get("snooze_days")))
            for r in raw.get("override_reasons") or []
        )
        codes = {r.code for r in reasons}
        for code in site_snooze:
            if code not in codes:
                self._site_problem((*self.site_path, "snooze", code),
                                   f"{self.doc['id']}: no override reason {code!r} (has: {', '.join(sorted(codes))})")
        links = tuple(
            Link(link["label"], link["url"], link.get("type", "absolute"), link.get("app_context"))
            for link in raw.get("links") or []
        )
        if summary is None:
            return None
        return CardTemplate(summary, raw["summary"], detail, suggestions, raw.get("selection", "any"), reasons, links)

    def _suggestion(self, raw: Mapping[str, Any], path: Path_) -> Suggestion | None:
        actions = []
        for i, action in enumerate(raw["actions"]):
            here = (*path, "actions", i)
            if action["type"] == "create":
                if not _fhir_problems(action["resource"], self, (*here, "resource")):
                    actions.append(Action("create", action["description"], resource=action["resource"]))
            else:
                draft = action.get("draft")
                if self.data(draft, (*here, "draft"), medication=True) is None:
                    continue
                actions.append(Action(action["type"], action["description"], draft=draft, patch=action.get("patch")))
        tiers = frozenset(raw.get("tiers") or INDICATORS)
        return Suggestion(raw["id"], raw["label"], tuple(actions), bool(raw.get("recommended", False)), tiers,
                          raw.get("result_due_days"))

    def _check_usage(self, doc: Mapping[str, Any], tiers: Sequence[Tier]) -> None:
        referenced = set()
        for raw in [t["when"] for t in doc.get("tiers") or []] + list((doc.get("conditions") or {}).values()):
            referenced |= set(_names_in(raw))
        # A condition that only shapes the wording (``holds.late_finding``, ``cond.x``) is used too.
        card = doc.get("card") if isinstance(doc.get("card"), Mapping) else {}
        texts = [card.get("summary"), card.get("detail")] + [t.get("summary") for t in doc.get("tiers") or []]
        for text in texts:
            if isinstance(text, str):
                referenced |= set(re.findall(r"\b(?:holds|cond)\.([A-Za-z_][A-Za-z0-9_]*)", text))
        for name in sorted(self.condition_names - referenced):
            self.problem(("conditions", name), f"condition {name!r} is not used by any tier", severity="warning")
        used_in_text = json.dumps(doc.get("card", {})) + json.dumps(doc.get("tiers", []))
        for name in sorted(set(self.parameters) - self.used_parameters):
            if f"params.{name}" not in used_in_text:
                self.problem(("parameters", name), f"parameter {name!r} is not used", severity="warning")
        indicators = [t.indicator for t in tiers]
        ranks = [INDICATORS.index(i) for i in indicators]
        if ranks != sorted(ranks, reverse=True):
            self.problem(
                ("tiers",),
                f"tiers should go from the strongest indicator to the weakest (found {', '.join(indicators)})",
                severity="warning",
            )


def _names_in(raw: Any) -> Iterable[str]:
    """Names of conditions referenced inside a condition expression."""
    if isinstance(raw, str):
        yield raw
    elif isinstance(raw, Mapping):
        for key in ("all", "any"):
            for item in raw.get(key) or []:
                yield from _names_in(item)
        if "not" in raw:
            yield from _names_in(raw["not"])


def _anchor_text(raw: Any) -> str:
    if isinstance(raw, Mapping):
        name = str(raw.get("anchor"))
        for word, sign in (("plus", "+"), ("minus", "−")):
            if word in raw:
                return f"{name} {sign} {raw[word]}"
        return name
    return str(raw)


def _fhirpath_variables(expression: str) -> list[str]:
    return re.findall(r"%([A-Za-z_][A-Za-z0-9_]*)", re.sub(r"'(?:[^'\\]|\\.)*'", "", expression))


def _fhir_problems(resource: Mapping[str, Any], compiler: RuleCompiler, path: Path_) -> bool:
    """Validate a suggested resource with fhir.resources (R4B models read R4)."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    rtype = resource.get("resourceType")
    try:
        model = get_fhir_model_class(str(rtype))
    except KeyError:
        compiler.problem((*path, "resourceType"), f"unknown FHIR resource type {rtype!r}")
        return True
    probe = dict(resource)
    if "subject" in model.model_fields and "subject" not in probe:
        probe["subject"] = {"reference": "Patient/example"}  # the engine fills the real patient in
    try:
        model.model_validate(probe)
    except ValidationError as exc:
        for error in exc.errors()[:5]:
            loc = tuple(str(p) for p in error["loc"] if not str(p).startswith("function"))
            compiler.problem((*path, *loc[1:]) if loc else path, f"FHIR {rtype}: {error['msg']} at {'.'.join(loc)}")
        return True
    return False


# ---------------------------------------------------------------- the set


def rule_files(paths: Sequence[Path]) -> list[Path]:
    """Rule files named directly, or found directly inside the folders named."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix in RULE_FILE_SUFFIXES))
        else:
            files.append(path)
    return files


def valueset_dirs(paths: Sequence[Path]) -> list[Path]:
    """``valuesets/`` beside the rule files (folder named, or the folder of a file named)."""
    seen: list[Path] = []
    for path in paths:
        folder = (path if path.is_dir() else path.parent) / "valuesets"
        if folder.resolve() not in [s.resolve() for s in seen]:
            seen.append(folder)
    return seen


def load_site(path: Path | None, problems: list[Problem]) -> tuple[Located | None, dict[str, Any], dict[str, Any]]:
    """A site configuration file: per-rule overrides (``rules:``) and local codes per value set (``valuesets:``)."""
    if path is None:
        return None, {}, {}
    try:
        located = load_file(path)
    except YamlError as exc:
        problems.append(exc.problem)
        return None, {}, {}
    errors = schema_problems(located, "site")
    problems.extend(errors)
    if errors or not located.data:
        return located, {}, {}
    return located, dict(located.data.get("rules") or {}), dict(located.data.get("valuesets") or {})


def add_site_codes(
    valuesets: Mapping[str, ValueSet], additions: Mapping[str, Any], site: Located, problems: list[Problem]
) -> dict[str, ValueSet]:
    """The value sets with a site's local codes added, for every rule; each added code's source is its site line.

    Local systems are the hospital's own, so only codes of a known system have their format checked.
    A value set that sorts its codes by ``kind`` (e.g. LUTS) needs one of its kinds on every added code,
    or kind filters and "distinct: kind" would silently miss it.
    """
    result = dict(valuesets)
    for vs_id, entries in additions.items():
        base = valuesets.get(vs_id)
        if base is None:
            message = f"site file adds codes to unknown value set {vs_id!r}{_closest(vs_id, valuesets)}"
            problems.append(site.problem(("valuesets", vs_id), message, key=True))
            continue
        kinds = sorted({c.kind for c in base.concepts.values() if c.kind})
        concepts = dict(base.concepts)
        added: set[tuple[str, str]] = set()
        for i, raw in enumerate(entries):
            path: Path_ = ("valuesets", vs_id, i)
            system, code, kind = canonical_system(raw["system"]), raw["code"], raw.get("kind")
            if system in CODE_FORMATS and not CODE_FORMATS[system].match(code):
                problems.append(site.problem((*path, "code"), f"{code!r} is not a valid code of {system}"))
                continue
            if (kind or kinds) and kind not in kinds:
                expected = f"one of {', '.join(kinds)}" if kinds else "none (this value set has no kinds)"
                problems.append(site.problem((*path, "kind") if kind else path, f"{vs_id}: kind must be {expected}"))
                continue
            if (system, code) in added:
                problems.append(site.problem(path, f"duplicate site code {system}|{code} in {vs_id!r}"))
                continue
            if (system, code) in concepts:
                message = f"{system}|{code} is already in value set {vs_id!r}"
                problems.append(site.problem(path, message, severity="warning"))
                continue
            source = f"site file {site.file}:{site.where(path)[0]}"
            concepts[(system, code)] = Concept(system, code, raw["display"], source, kind, _ordinal(raw.get("ordinal")))
            added.add((system, code))
        result[vs_id] = replace(base, concepts=concepts)
    return result


UNIT_TABLE = Path("units") / "aliases.yaml"


def load_unit_aliases(
    roots: Sequence[Path], site: Located | None, problems: list[Problem]
) -> tuple[UnitAliases, list[bytes]]:
    """The unit-alias table (``units/aliases.yaml`` beside the rule files) plus a site file's ``units:``."""
    aliases, chunks = NO_ALIASES, []
    for folder in dict.fromkeys((p if p.is_dir() else p.parent) for p in roots):
        path = folder / UNIT_TABLE
        if not path.is_file():
            continue
        try:
            located = load_file(path)
        except YamlError as exc:
            problems.append(exc.problem)
            continue
        chunks.append(path.read_bytes())
        table = (located.data or {}).get("kinds") if isinstance(located.data, Mapping) else None
        found = unit_alias_problems(table)
        problems.extend(located.problem(("kinds", *where), message) for where, message in found)
        if not found:
            aliases = aliases.merged(table)  # type: ignore[arg-type]
    if site is not None and isinstance(site.data, Mapping) and site.data.get("units") is not None:
        found = unit_alias_problems(site.data["units"])
        problems.extend(site.problem(("units", *where), message) for where, message in found)
        if not found:
            aliases = aliases.merged(site.data["units"])
    return aliases, chunks


def load_ruleset(paths: Sequence[Path | str], *, site: Path | str | None = None) -> LoadResult:
    """Load and check rule files (and their value sets); all problems, or a complete RuleSet."""
    roots = [Path(p) for p in paths]
    problems: list[Problem] = []
    valuesets: dict[str, ValueSet] = {}
    chunks: list[bytes] = []
    for folder in valueset_dirs(roots):
        found, vs_chunks = load_valuesets(folder, problems)
        valuesets.update(found)
        chunks.extend(vs_chunks)
    site_located, overrides, site_codes = load_site(Path(site) if site else None, problems)
    if site_located is not None:
        chunks.append(Path(site_located.file).read_bytes())
        valuesets = add_site_codes(valuesets, site_codes, site_located, problems)
    unit_aliases, unit_chunks = load_unit_aliases(roots, site_located, problems)
    chunks.extend(unit_chunks)
    rules: list[Rule] = []
    seen: dict[str, tuple[str, int]] = {}
    files = rule_files(roots)
    for path in files:
        if not path.exists():
            problems.append(Problem(str(path), 1, 1, "no such file"))
            continue
        try:
            located = load_file(path)
        except YamlError as exc:
            problems.append(exc.problem)
            continue
        chunks.append(path.read_bytes())
        errors, structural = schema_check(located, "rule")
        problems.extend(errors)
        if structural:
            continue
        rule_id = located.data["id"]
        if rule_id in seen:
            first_file, first_line = seen[rule_id]
            problems.append(
                located.problem(("id",), f"duplicate rule id {rule_id!r} (first in {first_file}:{first_line})")
            )
            continue
        seen[rule_id] = (str(path), located.where(("id",))[0])
        compiler = RuleCompiler(located, valuesets, overrides.get(rule_id) or {}, site_located, ("rules", rule_id))
        rule = compiler.compile()
        problems.extend(compiler.problems)
        if rule is not None and not errors:
            rules.append(rule)
    for rule_id in overrides:
        if rule_id not in seen and site_located is not None:
            problems.append(
                site_located.problem(("rules", rule_id), f"site file names unknown rule {rule_id!r}", key=True)
            )
    _check_precedence(rules, problems)
    if not files:
        problems.append(Problem(str(roots[0]) if roots else ".", 1, 1, "no rule files found"))
    if any(p.severity == "error" for p in problems):
        return LoadResult(None, problems)
    ordinals = {key: c.ordinal for vs in valuesets.values() for key, c in vs.concepts.items() if c.ordinal is not None}
    ruleset = RuleSet(
        tuple(rules), valuesets, digest_of(chunks), tuple(str(f) for f in files), ordinals, unit_aliases
    )
    plan_of(ruleset)  # compiled now, not on the first hook call
    return LoadResult(ruleset, problems)


def _check_precedence(rules: Sequence[Rule], problems: list[Problem]) -> None:
    topics = {r.topic for r in rules if r.topic}
    for rule in rules:
        for suppression in rule.suppress_when:
            if suppression.topic not in topics:
                problems.append(
                    Problem(
                        rule.file,
                        1,
                        1,
                        f"{rule.id}: suppress_when topic {suppression.topic!r} is not the topic of any loaded rule",
                        "warning",
                    )
                )
