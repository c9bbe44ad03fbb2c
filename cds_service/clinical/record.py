"""PatientRecord: one patient's FHIR data, indexed once, read by every rule.

Built from plain resource dicts (already parsed and checked at the edge), plus the draft
orders of the hook. Selections by value set are cached per record, so fifteen rules asking
for "ketamine sessions" compute the dose arithmetic once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from cds_service.clinical.exposure import (
    Session,
    Weight,
    session_from_administration,
    session_from_request,
    session_from_statement,
)
from cds_service.clinical.facts import FactsCache
from cds_service.clinical.findings import (
    EXCLUDED_STATUS,
    HISTORY_STATUS,
    Finding,
    Value,
    birth_date,
    code_of,
    concept_label,
    event_time,
    resource_ref,
    status_of,
    upper_limit,
    value_of,
)
from cds_service.clinical.results import derived_results
from cds_service.clinical.units import NO_ALIASES, UnitAliases, UnitError, convert
from cds_service.clinical.valueset import Match, ValueSet

MEDICATION_TYPES = ("MedicationAdministration", "MedicationStatement", "MedicationRequest")


class PatientRecord:
    """Facts of one patient at one evaluation."""

    def __init__(
        self,
        resources: Iterable[Mapping[str, Any]],
        *,
        drafts: Sequence[Mapping[str, Any]] = (),
        ordinal_codes: Mapping[tuple[str, str], float] | None = None,
        unavailable: Mapping[str, str] | None = None,
        unit_aliases: UnitAliases = NO_ALIASES,
        facts_cache: FactsCache | None = None,
    ) -> None:
        """``unavailable`` maps resource types whose data could not be (fully) obtained to why (a sentence
        naming the data, e.g. ``observation: HTTP 500``).

        The record cannot otherwise tell "no Observations" from "the Observation search failed";
        rules that read such types and do not fire are reported undecided, never a silent no.

        Results inside other resources (panel components, report conclusions) are indexed as results of
        their own (:mod:`cds_service.clinical.results`); ``unit_aliases`` reads lab unit strings per kind.
        ``facts_cache`` keeps per-resource facts across calls for resources that carry a content digest
        (:mod:`cds_service.clinical.facts`); it must belong to one rule set (its coded grades).
        """
        self._facts_cache = facts_cache
        self.by_type: dict[str, list[tuple[str, Mapping[str, Any]]]] = defaultdict(list)
        self._originals: list[Mapping[str, Any]] = []
        self._requests: dict[str, Mapping[str, Any]] = {}
        self._unit_aliases = unit_aliases
        self.patient: Mapping[str, Any] | None = None
        self._medications: dict[str, Mapping[str, Any]] = {}
        self._ordinal_codes = ordinal_codes or {}
        self.unavailable: dict[str, str] = dict(unavailable or {})
        self._cache: dict[tuple[Any, ...], Any] = {}
        # Per resource (by identity; the record holds them): facts every value set's Finding shares.
        self._facts: dict[int, tuple[Any, ...]] = {}
        self._code_index: dict[str, dict[tuple[str, str] | None, list[int]]] = {}
        for index, resource in enumerate(resources):
            rtype = str(resource.get("resourceType"))
            ref = resource_ref(resource, index)
            if rtype == "Patient" and self.patient is None:
                self.patient = resource
            elif rtype == "Medication":
                self._medications[ref] = resource
            elif rtype == "MedicationRequest":
                self._requests[ref] = resource
            self.by_type[rtype].append((ref, resource))
            self._originals.append(resource)
            for derived_ref, derived in derived_results(resource, ref):
                self.by_type[str(derived["resourceType"])].append((derived_ref, derived))
        self._birth = birth_date(self.patient)
        self.drafts: list[tuple[str, Mapping[str, Any]]] = [(resource_ref(d, i), d) for i, d in enumerate(drafts)]

    @property
    def patient_id(self) -> str | None:
        return str(self.patient["id"]) if self.patient and self.patient.get("id") else None

    def resources(self) -> list[Mapping[str, Any]]:
        """Every resource, drafts last; the FHIRPath ``%bundle`` view is built from this."""
        return [*self._originals, *(d for _, d in self.drafts)]

    # ------------------------------------------------------------ findings

    def findings(
        self, valueset: ValueSet, types: tuple[str, ...], *, history: bool = False, unit: str | None = None
    ) -> list[Finding]:
        """Coded events of ``types`` whose code is in ``valueset``, oldest first; errors excluded.

        Problems that are over (resolved, inactive, remission) are history: left out unless ``history``.
        ``unit`` is the kind of result asked for (the UCUM unit the rule compares in): a lab's unit string
        listed for that kind in the unit-alias table is read as that unit.
        """
        key = ("findings", valueset.id, types, history, unit)
        if key not in self._cache:
            found: list[Finding] = []
            for rtype in types:
                for ref, resource in self._candidates(rtype, valueset):
                    match = valueset.match(code_of(resource))
                    if match is None:
                        continue
                    facts = self._facts.get(id(resource))
                    if facts is None:
                        facts = self._facts[id(resource)] = self._facts_of(resource, rtype)
                    status, start, end, value, uln = facts
                    if status in EXCLUDED_STATUS or (status in HISTORY_STATUS and not history):
                        continue
                    found.append(
                        Finding(
                            ref=ref,
                            resource_type=rtype,
                            time=start,
                            end=end,
                            label=_label(match, resource),
                            value=self._in_kind(value, unit),
                            status=status,
                            resource=resource,
                            uln=self._uln_in_kind(uln, unit),
                        )
                    )
            found.sort(key=lambda f: (f.time is None, f.time))
            self._cache[key] = found
        return self._cache[key]

    def _in_kind(self, value: Value | None, unit: str | None) -> Value | None:
        if value is None or unit is None or value.unit is None:
            return value
        resolved = self._unit_aliases.resolve(value.unit, unit)
        return value if resolved == value.unit else replace(value, unit=resolved)

    def _uln_in_kind(self, uln: tuple[float, str | None] | None, unit: str | None) -> tuple[float, str | None] | None:
        if uln is None or unit is None:
            return uln
        return uln[0], self._unit_aliases.resolve(uln[1], unit)

    def _facts_of(self, resource: Mapping[str, Any], rtype: str) -> tuple[Any, ...]:
        """(status, start, end, value, upper limit) of one resource: the same in every value set it is in,
        and on every call that sends the same resource (looked up by its digest when it has one)."""
        digest = getattr(resource, "digest", None)
        key = (digest, rtype, self._birth) if digest is not None and self._facts_cache is not None else None
        if key is not None:
            found = self._facts_cache.get(key)  # type: ignore[union-attr]
            if found is not None:
                return found
        start, end = event_time(resource, self._birth)
        value = value_of(resource, self._ordinal_codes) if rtype == "Observation" else None
        facts = status_of(resource), start, end, value, upper_limit(resource)
        if key is not None:
            self._facts_cache.put(key, facts)  # type: ignore[union-attr]
        return facts

    def _candidates(self, rtype: str, valueset: ValueSet) -> Iterable[tuple[str, Mapping[str, Any]]]:
        """Resources of ``rtype`` that may match ``valueset``, in record order.

        A set without text fallbacks matches by code only, so only resources carrying one of its codes
        (or an odd coding the index cannot key) can match: they are looked up in a per-type code index
        instead of testing every resource against every set. Sets with text fallbacks see every resource.
        """
        items = self.by_type.get(rtype, ())
        if valueset.text or not items:
            return items
        index = self._code_index.get(rtype)
        if index is None:
            index = self._code_index[rtype] = _code_index(items)
        positions: set[int] = set(index.get(None, ()))
        concepts = valueset.concepts
        if len(concepts) <= len(index):
            for key in concepts:
                positions.update(index.get(key, ()))
        else:
            for key, where in index.items():
                if key in concepts:
                    positions.update(where)
        return [items[i] for i in sorted(positions)]

    # ------------------------------------------------------------ exposure

    def weights(self, valueset: ValueSet | None) -> list[Weight]:
        """Body weights in kg (any mass unit converted) for mg/kg doses."""
        if valueset is None:
            return []
        key = ("weights", valueset.id)
        if key not in self._cache:
            weights = []
            for finding in self.findings(valueset, ("Observation",)):
                value = finding.value
                if finding.time is None or value is None or value.quantity is None or not value.unit:
                    continue
                try:
                    weights.append(Weight(finding.time, convert(value.quantity, value.unit, "kg"), finding.ref))
                except UnitError:
                    continue
            self._cache[key] = weights
        return self._cache[key]

    def sessions(
        self, valueset: ValueSet, weight_valueset: ValueSet | None, now: datetime, *, planned: bool = True
    ) -> list[Session]:
        """Exposure sessions for a medication value set; draft orders as planned sessions."""
        key = ("sessions", valueset.id, weight_valueset.id if weight_valueset else None, now, planned)
        if key in self._cache:
            return self._cache[key]
        weights = self.weights(weight_valueset)
        sessions: list[Session] = []
        carried_out = self._carried_out_orders()
        for rtype in MEDICATION_TYPES:
            for ref, resource in self.by_type.get(rtype, ()):
                if ref in carried_out:
                    continue  # an order its administrations carry out: they are the exposure, not a supply
                session = self._session(resource, ref, valueset, weights, now, planned=False)
                if session is not None:
                    sessions.append(session)
        if planned:
            for ref, resource in self.drafts:
                if resource.get("resourceType") == "MedicationRequest":
                    session = self._session(resource, ref, valueset, weights, now, planned=True)
                    if session is not None:
                        sessions.append(session)
        sessions.sort(key=lambda s: (s.start, s.end))
        self._cache[key] = sessions
        return sessions

    def undosed_administrations(
        self, valuesets: Sequence[ValueSet], weight_valueset: ValueSet | None, now: datetime
    ) -> list[str]:
        """One sentence per medication set whose administrations have no usable dose, saying how many and why.

        A session without a dose still counts as a session, but never toward a cumulative dose; the card
        (or the checks-incomplete card) must say so rather than let a total look complete.
        """
        sentences = []
        for valueset in valuesets:
            # planned=True: the rules' own (cached) sessions; planned ones are filtered out by kind anyway
            given = [s for s in self.sessions(valueset, weight_valueset, now) if s.kind == "administration"]
            undosed = [s for s in given if s.dose.missing]
            if undosed:
                reasons = sorted({s.dose.how for s in undosed})
                shown = "; ".join(reasons[:3]) + ("; …" if len(reasons) > 3 else "")
                sentences.append(f"{len(undosed)} of {len(given)} {valueset.title} administration(s) have no "
                                 f"usable dose, so dose totals leave them out ({shown})")
        return sentences

    def draft_matches(self, valueset: ValueSet) -> list[tuple[str, Mapping[str, Any], Match]]:
        """Draft orders whose medication is in ``valueset``."""
        result = []
        for ref, resource in self.drafts:
            match = self.medication_match(resource, valueset)
            if match is not None:
                result.append((ref, resource, match))
        return result

    def medication_match(self, resource: Mapping[str, Any], valueset: ValueSet) -> Match | None:
        """Match a medication resource by its code, its Medication's code, or the ingredients."""
        concept = resource.get("medicationCodeableConcept")
        if isinstance(concept, Mapping):
            return valueset.match(concept)
        medication = self.medication_of(resource)
        if medication is None:
            return None
        match = valueset.match(medication.get("code"))
        if match is not None:
            return match
        for ingredient in medication.get("ingredient") or ():
            if isinstance(ingredient, Mapping):
                match = valueset.match(ingredient.get("itemCodeableConcept"))
                if match is not None:
                    return match
        return None

    def _carried_out_orders(self) -> set[str]:
        """References of the orders (MedicationRequest) that administrations in the record carry out."""
        key = ("carried_out",)
        if key not in self._cache:
            refs = set()
            for _, administration in self.by_type.get("MedicationAdministration", ()):
                order = self.order_of(administration)
                if order is not None:
                    refs.add(order[0])
            self._cache[key] = refs
        return self._cache[key]

    def order_of(self, administration: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
        """The MedicationRequest an administration carries out (``request``), when the record has it."""
        reference = administration.get("request")
        target = reference.get("reference") if isinstance(reference, Mapping) else None
        if not isinstance(target, str):
            return None
        if target.startswith("#"):
            for contained in administration.get("contained") or ():
                if isinstance(contained, Mapping) and contained.get("id") == target[1:]:
                    return target, contained
            return None
        key = "/".join(target.split("/_history")[0].split("/")[-2:])
        found = self._requests.get(key)
        return (key, found) if found is not None else None

    def medication_of(self, resource: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The Medication a resource references: contained (``#id``) or in the record."""
        reference = resource.get("medicationReference")
        target = reference.get("reference") if isinstance(reference, Mapping) else None
        if not isinstance(target, str):
            return None
        if target.startswith("#"):
            for contained in resource.get("contained") or ():
                if isinstance(contained, Mapping) and contained.get("id") == target[1:]:
                    return contained
            return None
        return self._medications.get(target) or self._medications.get(target.split("/_history")[0])

    def _session(
        self,
        resource: Mapping[str, Any],
        ref: str,
        valueset: ValueSet,
        weights: list[Weight],
        now: datetime,
        *,
        planned: bool,
    ) -> Session | None:
        match = self.medication_match(resource, valueset)
        if match is None:
            return None
        medication = self.medication_of(resource)
        label = match.text or valueset.title
        rtype = resource.get("resourceType")
        if rtype == "MedicationAdministration":
            order = self.order_of(resource)
            return session_from_administration(
                resource, ref, label, match.method, weights, medication, now,
                order=order, order_medication=self.medication_of(order[1]) if order else None,
            )
        if rtype == "MedicationStatement":
            return session_from_statement(resource, ref, label, match.method, weights, medication, now)
        return session_from_request(resource, ref, label, match.method, weights, medication, now, planned=planned)


def _code_index(items: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[tuple[str, str] | None, list[int]]:
    """(system, code) → positions of the resources whose ``code`` has that coding; ``None`` → positions of
    resources with a coding that is not a plain pair of strings (always tested, never missed)."""
    index: dict[tuple[str, str] | None, list[int]] = defaultdict(list)
    for position, (_, resource) in enumerate(items):
        concept = code_of(resource)
        if not concept:
            continue
        for coding in concept.get("coding") or ():
            if not isinstance(coding, Mapping):
                continue
            system, code = coding.get("system"), coding.get("code")
            if not system or not code:
                continue  # match_coding ignores it too
            key = (system, code) if isinstance(system, str) and isinstance(code, str) else None
            where = index[key]
            if not where or where[-1] != position:
                where.append(position)
    return dict(index)


def _label(match: Match, resource: Mapping[str, Any]) -> str:
    """Evidence label: the code's own text, else the value set's display for the code."""
    concept = code_of(resource)
    if concept and (concept.get("text") or any(isinstance(c, Mapping) and c.get("display")
                                                for c in concept.get("coding") or ())):
        return concept_label(concept)
    if match.concept is not None:
        return match.concept.display
    return concept_label(concept) or str(resource.get("resourceType"))
