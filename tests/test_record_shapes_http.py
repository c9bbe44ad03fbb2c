"""Each record shape of issue 16 over real HTTP: in the prefetch, and fetched from a real FHIR server.

The service runs on a loopback port with the bundled rules; the FHIR-fallback cases load the shapes into
the sekmet FHIR server and send no prefetch for them, so the service's own queries (the published
templates, the order reads) must find them.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import shapes as s
import test_service_http
from test_service_http import EXT, OSIGN, PV, Service, only_card, prefetch, request_body

service = test_service_http.service  # the running service (a module-scoped fixture), shared, not redefined

DRAFT = {"resourceType": "MedicationRequest", "id": "draft1", "status": "draft", "intent": "order",
         "medicationCodeableConcept": s.KETAMINE, "subject": {"reference": "Patient/p1"},
         "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": 35, "unit": "mg", "system": s.UCUM,
                                                                   "code": "mg"}}]}]}


def now_resources(*resources: dict[str, Any], pid: str = "p1") -> list[dict[str, Any]]:
    return s.absolute(list(resources), datetime.now(UTC), pid)


def cards_of(response: Any) -> dict[str, dict[str, Any]]:
    """Rule id → the card that carries it (rules on one topic share the strongest card)."""
    assert response.status_code == 200, response.text
    found: dict[str, dict[str, Any]] = {}
    for card in response.json()["cards"]:
        for rule in card["extension"].get(f"{EXT}.rules") or [card["extension"][f"{EXT}.rule"]]:
            found.setdefault(rule["id"], card)
    return found


# ---------------------------------------------------------------- in the prefetch


def test_component_panel_and_separate_results_give_the_same_cards_over_http(service: Service) -> None:
    panel = cards_of(service.hook(PV, request_body(prefetch=prefetch(*now_resources(*s.course(), s.ua_panel())))))
    separate = cards_of(service.hook(PV, request_body(prefetch=prefetch(*now_resources(*s.course(),
                                                                                      *s.ua_separate())))))
    assert {k: (c["indicator"], c["summary"]) for k, c in panel.items()} == \
        {k: (c["indicator"], c["summary"]) for k, c in separate.items()}
    assert panel["KB-02"]["indicator"] == "critical"
    assert "Observation/ua1.component[3]" not in panel["KB-02"]["detail"]  # evidence shows labels, not paths
    assert re.search(r"\b30\b[^|]*HPF", panel["KB-02"]["detail"])  # the red-cell count in the evidence


def test_range_valued_microscopy_is_read_and_an_undecided_tier_is_said(service: Service) -> None:
    data = prefetch(*now_resources(*s.course(), s.rbc(valueString="10-40 RBC/HPF")))
    card = only_card(service.hook(PV, request_body(prefetch=data)))
    assert card["indicator"] == "warning"
    assert "10-40" in card["detail"]  # the evidence, and the reason the critical tier is undecided


def test_resolved_childhood_problem_recorded_in_the_course_gives_no_card(service: Service) -> None:
    data = prefetch(*now_resources(*s.course(), s.childhood_hematuria()))
    response = service.hook(PV, request_body(prefetch=data))
    assert response.status_code == 200
    assert "KB-02" not in cards_of(response)


def test_dose_from_the_order_in_the_prefetch(service: Service) -> None:
    infusions = [s.infusion(f"inf{i}", d, 8) for i, d in enumerate((-26, -22, -18, -14, -10, -6, -2))]
    data = prefetch(*now_resources(s.weight(80, "-30d"), s.infusion_order(), *infusions))
    body = request_body("order-sign", prefetch=data, drafts=now_resources(DRAFT))
    card = cards_of(service.hook(OSIGN, body))["KB-04"]
    assert card["indicator"] == "warning"
    assert "dose from the order" in card["detail"]


def test_no_dose_anywhere_is_counted_on_the_response(service: Service) -> None:
    infusions = [s.infusion(f"inf{i}", d, 8, order=None) for i, d in enumerate((-26, -22, -18))]
    data = prefetch(*now_resources(*infusions))
    response = service.hook(OSIGN, request_body("order-sign", prefetch=data, drafts=now_resources(DRAFT)))
    assert response.status_code == 200
    (sentence,) = response.json()["extension"][f"{EXT}.doseUnknown"]
    assert sentence.startswith("3 of 3 ketamine administration(s) have no usable dose")
    assert all(sentence in c["detail"] for c in response.json()["cards"])  # every card says so


def test_an_order_that_cannot_be_read_is_missing_data(service: Service) -> None:
    infusions = [s.infusion(f"inf{i}", d, 8) for i, d in enumerate((-26, -22))]
    data = prefetch(*now_resources(*infusions))  # the order is neither prefetched nor reachable
    response = service.hook(OSIGN, request_body("order-sign", prefetch=data, drafts=now_resources(DRAFT)))
    missing = {m["key"]: m["reason"] for m in response.json()["extension"][f"{EXT}.missingData"]}
    assert missing["order"] == "1 referenced order(s) not available (no FHIR access)"


def test_culture_and_ultrasound_reports_in_the_prefetch(service: Service) -> None:
    esterase = {"resourceType": "Observation", "id": "le1", "status": "final", "code": s.loinc(s.ESTERASE),
                "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "-3d", "valueString": "positive"}
    data = prefetch(*now_resources(*s.course(), esterase, s.culture_report(), s.ultrasound_report()))
    found = cards_of(service.hook(PV, request_body(prefetch=data)))
    assert found["KB-11"]["indicator"] == "critical"
    assert "KB-03" in found  # sterile pyuria, on the urinary card KB-11 leads
    assert re.search(r"KB-03 v[\d.]+, warning", found["KB-03"]["detail"])


# ---------------------------------------------------------------- fetched from a real FHIR server


def _load(fhir_server: Any, resources: list[dict[str, Any]]) -> str:
    """POST the resources as one transaction for a new patient; references between them become server ids."""
    mrn = f"kbladder-shapes-{uuid.uuid4().hex[:8]}"
    urls = {f"{r['resourceType']}/{r['id']}": f"urn:uuid:{uuid.uuid4()}" for r in resources}
    patient_url = f"urn:uuid:{uuid.uuid4()}"

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            if isinstance(value.get("reference"), str):
                ref = value["reference"]
                return {**value, "reference": patient_url if ref.startswith("Patient/") else urls.get(ref, ref)}
            return {k: rewrite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    entries = [{"fullUrl": patient_url, "request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient", "birthDate": "1986-06-01", "gender": "female",
                             "identifier": [{"system": "http://hospital.smarthealthit.org", "value": mrn}]}}]
    for resource in resources:
        body = rewrite({k: v for k, v in resource.items() if k != "id"})
        entries.append({"fullUrl": urls[f"{resource['resourceType']}/{resource['id']}"],
                        "request": {"method": "POST", "url": resource["resourceType"]}, "resource": body})
    fhir_server.post_bundle({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    return fhir_server.patient_by_mrn(mrn)


def _fallback(fhir_server: Any, pid: str, hook: str = "patient-view", **extra: Any) -> dict[str, Any]:
    auth = {"access_token": fhir_server.token, "token_type": "Bearer", "expires_in": 300,
            "scope": "patient/*.read", "subject": "kbladder-cds", "patient": pid}
    return request_body(hook, pid=pid, fhirServer=fhir_server.base_url, fhirAuthorization=auth, **extra)


def test_fhir_fallback_reads_panels_reports_and_resolved_problems(
    service: Service, fhir_server: Any, no_token_in_logs: None
) -> None:
    pid = _load(fhir_server, now_resources(*s.course(), s.ua_panel(), s.ultrasound_report(),
                                           s.childhood_hematuria(recorded="-1d")))
    response = service.hook(PV, _fallback(fhir_server, pid))
    found = cards_of(response)
    assert found["KB-02"]["indicator"] == "critical"  # from the panel's components, fetched by the panel code
    assert found["KB-11"]["indicator"] == "critical"  # from the ultrasound report's conclusion
    assert "missingData" not in str(response.json().get("extension", {}))


def test_fhir_fallback_follows_the_administration_to_its_order(
    service: Service, fhir_server: Any, no_token_in_logs: None
) -> None:
    infusions = [s.infusion(f"inf{i}", d, 8) for i, d in enumerate((-26, -22, -18, -14, -10, -6, -2))]
    pid = _load(fhir_server, now_resources(s.weight(80, "-30d"), s.infusion_order(), *infusions))
    # The EHR prefetched only the active orders (none): the completed order is read from the server by id.
    body = _fallback(fhir_server, pid, "order-sign", drafts=now_resources(DRAFT, pid=pid),
                     prefetch={"medicationRequest": {"resourceType": "Bundle", "type": "searchset", "entry": []}})
    response = service.hook(OSIGN, body)
    card = cards_of(response)["KB-04"]
    assert card["indicator"] == "warning"
    assert "dose from the order" in card["detail"]
    assert "doseUnknown" not in str(response.json().get("extension", {}))
