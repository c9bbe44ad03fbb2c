"""Codes the synthetic cohort uses: only those marked V1/V2 in clinical.md §3, plus project codes.

Concepts with no verified code (post-void residual, voided volume, ICSI/ICPI/PUF, ketamine
uropathy) use the project code system; concepts outside clinical.md §3 (BPH, cancers,
non-ketamine drugs, culture organisms) are written as text only, never with a guessed code.
"""

from __future__ import annotations

from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"
PROJECT = "https://kbladder-cds.org/fhir/CodeSystem/kbladder"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
MRN_SYSTEM = "https://kbladder-cds.org/fhir/synthetic-mrn"


def coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def concept(*codings: dict[str, str], text: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if codings:
        result["coding"] = list(codings)
    if text:
        result["text"] = text
    return result


# ----------------------------------------------------------------- observations (LOINC §3.2 / project)

# key -> (system, code, display, category, UCUM unit or None)
OBSERVATIONS: dict[str, tuple[str, str, str, str, str | None]] = {
    "weight": (LOINC, "29463-7", "Body weight", "vital-signs", "kg"),
    "ua-panel": (LOINC, "24357-6", "Urinalysis macro (dipstick) panel - Urine", "laboratory", None),
    "urine-blood": (LOINC, "5794-3", "Hemoglobin [Presence] in Urine by Test strip", "laboratory", None),
    "urine-le": (LOINC, "5799-2", "Leukocyte esterase [Presence] in Urine by Test strip", "laboratory", None),
    "urine-nitrite": (LOINC, "5802-4", "Nitrite [Presence] in Urine by Test strip", "laboratory", None),
    "urine-rbc": (
        LOINC, "13945-1", "Erythrocytes [#/area] in Urine sediment by Microscopy high power field",
        "laboratory", "/[HPF]",
    ),
    "urine-wbc": (
        LOINC, "5821-4", "Leukocytes [#/area] in Urine sediment by Microscopy high power field",
        "laboratory", "/[HPF]",
    ),
    "urine-culture": (LOINC, "630-4", "Bacteria identified in Urine by Culture", "laboratory", None),
    # analyser (automated test strip) codes that labs send instead of the manual-strip ones
    "urine-blood-auto": (LOINC, "57751-0", "Hemoglobin [Presence] in Urine by Automated test strip", "laboratory",
                         None),
    "urine-le-auto": (LOINC, "60026-2", "Leukocyte esterase [Presence] in Urine by Automated test strip",
                      "laboratory", None),
    "urine-nitrite-auto": (LOINC, "50558-6", "Nitrite [Presence] in Urine by Automated test strip", "laboratory",
                           None),
    "creatinine-mass": (LOINC, "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "laboratory", "mg/dL"),
    "creatinine-molar": (LOINC, "14682-9", "Creatinine [Moles/volume] in Serum or Plasma", "laboratory", "umol/L"),
    "egfr": (
        LOINC, "98979-8",
        "Glomerular filtration rate [Volume Rate/Area] in Serum, Plasma or Blood by Creatinine-based formula "
        "(CKD-EPI 2021)/1.73 sq M",
        "laboratory", "mL/min/{1.73_m2}",
    ),
    "alt": (LOINC, "1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
            "laboratory", "U/L"),
    "ast": (LOINC, "1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
            "laboratory", "U/L"),
    "alp": (LOINC, "6768-6", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma",
            "laboratory", "U/L"),
    "ggt": (LOINC, "2324-2", "Gamma glutamyl transferase [Enzymatic activity/volume] in Serum or Plasma",
            "laboratory", "U/L"),
    "bilirubin": (LOINC, "1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "laboratory", "mg/dL"),
    "ipss": (LOINC, "80976-4", "International Prostate Symptom Score [IPSS]", "survey", "{score}"),
    "pvr": (PROJECT, "pvr", "Post-void residual volume", "exam", "mL"),
    "voided-volume-max": (PROJECT, "voided-volume-max", "Maximum voided volume (bladder diary)", "exam", "mL"),
    "icsi": (PROJECT, "icsi", "O'Leary-Sant Interstitial Cystitis Symptom Index", "survey", "{score}"),
    "icpi": (PROJECT, "icpi", "O'Leary-Sant Interstitial Cystitis Problem Index", "survey", "{score}"),
    "puf": (PROJECT, "puf", "Pelvic Pain and Urgency/Frequency symptom score", "survey", "{score}"),
}

# Coded results (SNOMED §3.3).
RESULTS: dict[str, dict[str, str]] = {
    "blood-neg": coding(SNOMED, "167297006", "Urine blood test = negative"),
    "blood-1+": coding(SNOMED, "167300001", "Urine blood test = +"),
    "blood-2+": coding(SNOMED, "167301002", "Urine blood test = ++"),
    "blood-3+": coding(SNOMED, "167302009", "Urine blood test = +++"),
    "le-1+": coding(SNOMED, "394712000", "Urine leukocyte test = +"),
    "nitrite-pos": coding(SNOMED, "314137006", "Urine nitrite positive"),
    "no-growth": coding(SNOMED, "264868006", "No growth"),
}

# ----------------------------------------------------------------- conditions (SNOMED §3.3, ICD-10-CM §3.4)

CONDITIONS: dict[str, dict[str, Any]] = {
    "frequency": concept(coding(SNOMED, "162116003", "Increased frequency of urination"),
                         coding(ICD10CM, "R35.0", "Frequency of micturition"), text="Urinary frequency"),
    "urgency": concept(coding(SNOMED, "75088002", "Urgent desire to urinate"),
                       coding(ICD10CM, "R39.15", "Urgency of urination"), text="Urinary urgency"),
    "nocturia": concept(coding(SNOMED, "139394000", "Nocturia"), coding(ICD10CM, "R35.1", "Nocturia"),
                        text="Nocturia"),
    "dysuria": concept(coding(SNOMED, "49650001", "Dysuria"), coding(ICD10CM, "R30.0", "Dysuria"),
                       text="Dysuria"),
    "suprapubic-pain": concept(coding(ICD10CM, "R10.24", "Suprapubic pain"), text="Suprapubic pain"),
    "incomplete-emptying": concept(coding(ICD10CM, "R39.14", "Feeling of incomplete bladder emptying"),
                                   text="Feeling of incomplete bladder emptying"),
    "microscopic-hematuria": concept(coding(SNOMED, "197940006", "Microscopic hematuria"),
                                     coding(ICD10CM, "R31.21", "Asymptomatic microscopic hematuria"),
                                     text="Microscopic haematuria"),
    "urge-incontinence": concept(coding(SNOMED, "87557004", "Urge incontinence of urine"),
                                 coding(ICD10CM, "N39.41", "Urge incontinence"), text="Urge incontinence"),
    "interstitial-cystitis": concept(coding(SNOMED, "197834003", "Chronic interstitial cystitis"),
                                     coding(ICD10CM, "N30.10", "Interstitial cystitis (chronic) without hematuria"),
                                     text="Interstitial cystitis"),
    "gross-hematuria": concept(coding(SNOMED, "197941005", "Frank hematuria"),
                               coding(ICD10CM, "R31.0", "Gross hematuria"), text="Visible haematuria"),
    "retention": concept(coding(SNOMED, "267064002", "Retention of urine"),
                         coding(ICD10CM, "R33.9", "Retention of urine, unspecified"), text="Retention of urine"),
    "hydronephrosis": concept(coding(SNOMED, "43064006", "Hydronephrosis"),
                              coding(ICD10CM, "N13.30", "Unspecified hydronephrosis"), text="Hydronephrosis"),
    "uti": concept(coding(SNOMED, "68566005", "Urinary tract infectious disease"),
                   coding(ICD10CM, "N39.0", "Urinary tract infection, site not specified"),
                   text="Urinary tract infection"),
    "ketamine-uropathy": concept(
        coding(PROJECT, "ketamine-uropathy", "Ketamine uropathy"),
        coding(ICD10CM, "N30.80", "Other cystitis without hematuria"),
        coding(ICD10CM, "T41.295S", "Adverse effect of other general anesthetics, sequela"),
        text="Ketamine-associated cystitis",
    ),
    "hallucinogen-dependence": concept(coding(ICD10CM, "F16.20", "Hallucinogen dependence, uncomplicated"),
                                       text="Ketamine dependence"),
    "mdd-recurrent-severe": concept(
        coding(ICD10CM, "F33.2", "Major depressive disorder, recurrent severe without psychotic features"),
        text="Treatment-resistant depression"),
    "mdd-single": concept(coding(ICD10CM, "F32.9", "Major depressive disorder, single episode, unspecified"),
                          text="Major depressive disorder"),
    "ptsd": concept(coding(ICD10CM, "F43.10", "Post-traumatic stress disorder, unspecified"), text="PTSD"),
    "chronic-pain": concept(coding(ICD10CM, "G89.29", "Other chronic pain"), text="Chronic pain"),
    "crps": concept(coding(ICD10CM, "G90.50", "Complex regional pain syndrome I, unspecified"),
                    text="Complex regional pain syndrome type 1"),
    # outside clinical.md §3: text only, no guessed code
    "bph": concept(text="Benign prostatic hyperplasia with lower urinary tract symptoms"),
    "pancreatic-cancer": concept(text="Metastatic carcinoma of pancreas"),
    "burn": concept(text="Burn injury, 30% total body surface area"),
    "fracture": concept(text="Closed fracture of shaft of femur"),
}

# ----------------------------------------------------------------- medications (§3.1)

MEDICATIONS: dict[str, dict[str, Any]] = {
    "ketamine-10": concept(
        coding(SNOMED, "781952002", "Ketamine (as ketamine hydrochloride) 10 mg/mL solution for injection"),
        text="Ketamine 10 mg/mL injection"),
    "ketamine-50": concept(
        coding(SNOMED, "781954001", "Ketamine (as ketamine hydrochloride) 50 mg/mL solution for injection"),
        text="Ketamine 50 mg/mL injection"),
    "ketamine-100": concept(
        coding(SNOMED, "781953007", "Ketamine (as ketamine hydrochloride) 100 mg/mL solution for injection"),
        text="Ketamine 100 mg/mL injection"),
    "ketamine-product": concept(coding(SNOMED, "333847008", "Product containing ketamine (medicinal product)"),
                                text="Ketamine"),
    "ketamine-oral": concept(coding(SNOMED, "333847008", "Product containing ketamine (medicinal product)"),
                             text="Ketamine 50 mg/5 mL oral solution"),
    "ketamine-street": concept(coding(SNOMED, "776446001", "Ketamine (product)"),
                               text="Ketamine (non-prescribed, insufflated)"),
    "ketamine-local": concept(text="KETALAR 500mg/10mL vial (local formulary)"),
    "esketamine-nasal": concept(
        coding(RXNORM, "2201625", "esketamine Nasal Spray [Spravato]"),
        coding(SNOMED, "789489008", "Product containing only esketamine in nasal dose form"),
        text="Spravato (esketamine) 28 mg nasal spray device"),
    # IV S-ketamine (Ketanest S) has no verified code: matched by name only (esketamine value set text).
    "esketamine-iv": concept(text="Esketamine 25 mg/mL solution for injection (Ketanest S)"),
    "nitrofurantoin": concept(text="Nitrofurantoin 100 mg modified-release capsule"),
}

RACEMIC_KEYS = frozenset(k for k in MEDICATIONS if k.startswith("ketamine"))
ESKETAMINE_KEYS = frozenset(k for k in MEDICATIONS if k.startswith("esketamine"))

# Hooks each rule runs on (clinical.md §2.1): order hooks for all rules, patient-view for six.
PATIENT_VIEW_RULES = frozenset({"KB-02", "KB-03", "KB-07", "KB-08", "KB-11", "KB-12"})
ALL_RULES = frozenset(f"KB-{n:02d}" for n in range(1, 16))
