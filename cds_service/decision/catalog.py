"""Our CDS services (one per hook) and their prefetch templates, derived from the loaded rules.

Templates come from the rules' data requirements, never from hand-written lists, so a new rule that
reads a new resource type is prefetched without a code change. Every generated template is checked
with ``template_problems``: an EHR silently drops a template it cannot run.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from cds_service.cdshooks import HOOKS, SERVICES, template_problems
from cds_service.clinical.results import PANEL_VALUESET, REPORT_VALUESETS
from cds_service.engine.model import MEDICATION_RESOURCES, RuleSet

log = logging.getLogger("cds_service.decision")

PATIENT_KEY = "patient"
COUNT = 1000


USAGE = ("Send prefetch for every template, or fhirServer with fhirAuthorization (read access to the "
         "patient's Patient, MedicationAdministration/Request/Statement, Observation and Condition, and to "
         "Medication resources those reference).")


def prefetch_key(resource_type: str) -> str:
    """``MedicationAdministration`` → ``medicationAdministration``: one key per resource type."""
    return resource_type[:1].lower() + resource_type[1:]


def resource_type_of(key: str) -> str:
    """Inverse of :func:`prefetch_key`."""
    return key[:1].upper() + key[1:]


def build_templates(ruleset: RuleSet | None, hook: str) -> dict[str, str]:
    """Prefetch templates for *hook*: the Patient read, and one search per resource type the rules read.

    A type gets a ``code=`` filter listing every code of every value set the hook's rules use for it,
    unless some of those matches are by text (medications, or any set with text fallbacks): a code
    filter would silently drop text-only matches, which is worse than fetching more.
    """
    templates = {PATIENT_KEY: "Patient/{{context.patientId}}"}
    if ruleset is None:
        return templates
    codes: dict[str, set[str]] = {}
    unfiltered: set[str] = set()
    for rule in ruleset.for_hook(hook):
        for requirement in rule.data.values():
            vs = requirement.valueset
            for rtype in requirement.resources:
                codes.setdefault(rtype, set()).update(f"{system}|{code}" for system, code in vs.concepts)
                if rtype in MEDICATION_RESOURCES or vs.text or not vs.concepts:
                    unfiltered.add(rtype)
    _add_panels_and_reports(ruleset, codes, unfiltered)
    for rtype in sorted(codes):
        if rtype == "Patient":
            continue
        query = f"{rtype}?patient={{{{context.patientId}}}}"
        if rtype not in unfiltered and codes[rtype]:
            query += "&code=" + ",".join(sorted(codes[rtype]))
        if rtype in MEDICATION_RESOURCES:
            # Bring the Medication a ``medicationReference`` points at, in the same Bundle. Outside the
            # spec's recommended query subset (P3): a client that ignores it sends the events alone and
            # the service reads the Medications from fhirServer (or reports them missing).
            query += f"&_include={rtype}:medication"
        templates[prefetch_key(rtype)] = f"{query}&_count={COUNT}"
    for key, template in list(templates.items()):
        problems = template_problems(template, hook)
        if problems:
            log.error("prefetch template %s for %s dropped: %s", key, hook, "; ".join(problems))
            del templates[key]
    return templates


def _add_panels_and_reports(ruleset: RuleSet, codes: dict[str, set[str]], unfiltered: set[str]) -> None:
    """Results that arrive inside other resources must be fetched too.

    A urinalysis sent as one panel Observation carries its blood, esterase and cell counts as components:
    a code filter without the panel codes would never fetch it. Cultures and imaging often arrive as a
    DiagnosticReport whose conclusion is the finding: the DiagnosticReport search is filtered by the report
    codes (urine culture, renal and bladder imaging), never by the findings' codes.
    """
    def concept_codes(vs_id: str) -> set[str]:
        vs = ruleset.valuesets.get(vs_id)
        return {f"{system}|{code}" for system, code in vs.concepts} if vs else set()

    if "Observation" in codes:
        codes["Observation"] |= concept_codes(PANEL_VALUESET)
    if "Observation" in codes or "DiagnosticReport" in codes:
        reports = set().union(*(concept_codes(vs_id) for vs_id in REPORT_VALUESETS))
        if reports:
            codes["DiagnosticReport"] = reports
            unfiltered.discard("DiagnosticReport")


_cache: dict[tuple[str, str], dict[str, str]] = {}
_cache_lock = threading.Lock()


def templates_for(ruleset: RuleSet | None, hook: str) -> dict[str, str]:
    """:func:`build_templates`, cached per rule-set version (rule sets are immutable)."""
    key = (ruleset.digest if ruleset else "", hook)
    found = _cache.get(key)
    if found is None:
        found = build_templates(ruleset, hook)
        with _cache_lock:
            if len(_cache) > 32:
                _cache.clear()
            _cache[key] = found
    return dict(found)


def discovery_document(ruleset: RuleSet | None, *, cds_hooks_version: str = "2.0") -> dict[str, Any]:
    """The body of GET /cds-services.

    For an EHR configured as speaking CDS Hooks 3.0, each service also names the specification version
    and the hook's version (3.0 ballot); a 2.0 client gets neither, as strict 2.0 validators refuse them.
    """
    services = []
    for s in SERVICES.values():
        entry: dict[str, Any] = {
            "hook": s.hook,
            "id": s.id,
            "title": s.title,
            "description": s.description,
            "usageRequirements": USAGE,
            "prefetch": templates_for(ruleset, s.hook),
        }
        if cds_hooks_version != "2.0":
            entry["version"] = cds_hooks_version
            entry["hookVersion"] = HOOKS[s.hook].hook_version
        services.append(entry)
    return {"services": services}
