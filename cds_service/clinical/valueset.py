"""Value sets: which codes (and, as a marked fallback, which words) mean a clinical concept.

A value set is data (``rules/valuesets/*.yaml``); this module only answers "does this
CodeableConcept belong?", saying whether it matched by code or by text, so evidence can
show a text-only match as the weaker thing it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
NDC = "http://hl7.org/fhir/sid/ndc"
UCUM = "http://unitsofmeasure.org"
ATC = "http://www.whocc.no/atc"
PROJECT = "https://kbladder-cds.org/fhir/CodeSystem/kbladder"

# Short names used in test shorthand (``LOINC#5794-3``) and accepted in value-set files.
SYSTEM_ALIASES: dict[str, str] = {
    "LOINC": LOINC,
    "SNOMED": SNOMED,
    "SCT": SNOMED,
    "RXNORM": RXNORM,
    "ICD10CM": ICD10CM,
    "ICD10": ICD10CM,
    "NDC": NDC,
    "UCUM": UCUM,
    "ATC": ATC,
    "KBLADDER": PROJECT,
}
KNOWN_SYSTEMS: frozenset[str] = frozenset(SYSTEM_ALIASES.values())

# Code formats, so `rules check` catches a LOINC code typed into a SNOMED row.
CODE_FORMATS: dict[str, re.Pattern[str]] = {
    LOINC: re.compile(r"^\d{1,7}-\d$"),
    SNOMED: re.compile(r"^[1-9]\d{5,17}$"),
    RXNORM: re.compile(r"^\d{1,8}$"),
    ICD10CM: re.compile(r"^[A-TV-Z]\d[0-9A-Z](?:\.[0-9A-Z]{1,4})?$"),
    NDC: re.compile(r"^\d{4,5}-\d{3,4}(?:-\d{1,2})?$"),
    ATC: re.compile(r"^[A-Z]\d{2}[A-Z]{2}\d{2}$"),
    PROJECT: re.compile(r"^[a-z0-9][a-z0-9-]*$"),
}


def canonical_system(system: str) -> str:
    """Expand a short system name (``LOINC``) to its URI; URIs pass through."""
    return SYSTEM_ALIASES.get(system.upper(), system) if "/" not in system else system


@dataclass(frozen=True, slots=True)
class Concept:
    """One code of a value set, with the public source that verifies it."""

    system: str
    code: str
    display: str
    source: str = ""
    kind: str | None = None  # a finer class within the set, e.g. "dysuria" in a LUTS set
    ordinal: float | None = None  # for result codes: negative=0, trace=0.5, 1+=1, ...


@dataclass(frozen=True, slots=True)
class Match:
    """How a CodeableConcept matched: by a code of the set, or by a word (weaker)."""

    method: str  # "code" | "text"
    concept: Concept | None
    text: str


@dataclass(slots=True)
class ValueSet:
    """A named set of codes plus optional whole-word text fallbacks."""

    id: str
    title: str
    concepts: dict[tuple[str, str], Concept]
    text: tuple[str, ...] = ()
    substance: str | None = None  # medication sets: which substance they count (doses never mix)
    _text_re: re.Pattern[str] | None = field(default=None, init=False, repr=False)

    def __hash__(self) -> int:
        """By id: equal sets have equal ids, and blocks that hold a set stay hashable (compiled plans share
        equal blocks across rules, engine/plan.py)."""
        return hash(self.id)

    def __post_init__(self) -> None:
        if self.text:
            words = "|".join(re.escape(word) for word in self.text)
            self._text_re = re.compile(rf"\b(?:{words})\b", re.IGNORECASE)

    def codes(self, system: str | None = None) -> list[str]:
        """The codes of one system (or all), in file order; used for prefetch code filters."""
        return [c.code for c in self.concepts.values() if system is None or c.system == system]

    def match_coding(self, system: str | None, code: str | None) -> Concept | None:
        """The concept for one coding, if it belongs to the set."""
        if not system or not code:
            return None
        return self.concepts.get((system, code))

    def match(self, concept: Mapping[str, Any] | None) -> Match | None:
        """Match a CodeableConcept: any coding in the set wins; else the text fallback."""
        if not concept:
            return None
        codings = concept.get("coding") or ()
        for coding in codings:
            if isinstance(coding, Mapping):
                hit = self.match_coding(coding.get("system"), coding.get("code"))
                if hit is not None:
                    return Match("code", hit, str(coding.get("display") or hit.display))
        if self._text_re is not None:
            for text in _texts(concept, codings):
                if self._text_re.search(text):
                    return Match("text", None, text)
        return None

    def match_text(self, text: str | None) -> bool:
        """Whole-word, case-insensitive match of free text (``valueString``) against the fallbacks."""
        return bool(text and self._text_re is not None and self._text_re.search(text))


def _texts(concept: Mapping[str, Any], codings: Iterable[Any]) -> Iterable[str]:
    if isinstance(concept.get("text"), str):
        yield concept["text"]
    for coding in codings:
        if isinstance(coding, Mapping) and isinstance(coding.get("display"), str):
            yield coding["display"]
