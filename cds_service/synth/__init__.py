"""Deterministic synthetic FHIR R4 cohort for kbladder-cds (clinical.md §2, §4).

    from cds_service.synth import generate_cohort, write_cohort
    cohort = generate_cohort(seed=7)           # now = 2026-06-01T09:00:00Z
    write_cohort(cohort, Path("var/synth"))    # <id>.json, <id>.drafts.json, manifest.json

Each patient is one clinical scenario (a regimen, warning signs, or a distractor) with the
rules that should fire per hook, written from clinical intent. No network, no clock, no
global RNG.
"""

from cds_service.synth.cohort import (
    DEFAULT_NOW,
    Cohort,
    SyntheticPatient,
    drafts_bundle,
    generate_cohort,
    main_synth,
    manifest,
    write_cohort,
)
from cds_service.synth.scenarios import SCENARIOS

__all__ = [
    "DEFAULT_NOW",
    "SCENARIOS",
    "Cohort",
    "SyntheticPatient",
    "drafts_bundle",
    "generate_cohort",
    "main_synth",
    "manifest",
    "write_cohort",
]
