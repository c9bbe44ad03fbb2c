"""One judge for every outbound URL (security/urls.py): the bearer token never leaves for another origin.

The attack that passed before: a next link ``http://127.0.0.1:PORT2\\@127.0.0.1:PORT1/fhir/x``.
``urllib.parse`` reads host 127.0.0.1 port PORT1 (the allowlisted server), ``requests`` connects to PORT2 and
sends ``Authorization: Bearer``. It is tested from a FHIR server's page and from a prefetched Bundle, with a
raw TCP listener on PORT2 that must see no connection at all, and a property test asserts that whenever the
judge accepts a URL, the connection ``requests`` opens for it goes to the allowlisted origin.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hookdata import dipstick, ketamine_given, patient
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer
from requests.adapters import HTTPAdapter
from test_conformance import (  # the conformance suite's running service and recording FHIR fake
    FakeFhir,
    authorization,
    prefetch_for,
    request_body,
    running,
)
from test_conformance import rules as rules  # (module fixture)

from cds_service.config import ConfigError, Issuer
from cds_service.fhir.client import FetchLimits, FhirClient
from cds_service.security.jwks import JwksCache
from cds_service.security.urls import Origin, RefusedUrl, origin_of, outbound_url, url_problem

BASE = "http://127.0.0.1:8080/fhir"


class Listener:
    """A raw TCP listener on a free loopback port that only counts connections (any byte sent is a leak)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


def attack(listener_port: int, fhir_port: int) -> str:
    return f"http://127.0.0.1:{listener_port}\\@127.0.0.1:{fhir_port}/fhir/x"


# -- the judge ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "reason"), [
    ("http://127.0.0.1:9\\@127.0.0.1:8080/fhir/x", "backslash in URL"),
    ("http://127.0.0.1:8080/fhir/x y", "whitespace in URL"),
    ("http://127.0.0.1:8080/fhir/\tx", "whitespace in URL"),
    ("http://127.0.0.1:8080/fhir/\x00x", "control character in URL"),
    ("http://127.0.0.1:8080/fhir/\u200bx", "non-ASCII character in URL"),
    ("http://１２７.0.0.1:8080/fhir/x", "non-ASCII character in URL"),
    ("http://user@127.0.0.1:8080/fhir/x", "user information in URL"),
    ("http://127.0.0.1:9@127.0.0.1:8080/fhir/x", "user information in URL"),
    ("http://127.0.0.1:8081/fhir/x", "another server"),
    ("https://127.0.0.1:8080/fhir/x", "another server"),
    ("http://localhost:8080/fhir/x", "another server"),
    ("http://127.0.0.1:8080/admin", "outside the base path"),
    ("http://127.0.0.1:8080/fhirx/Patient", "outside the base path"),
    ("http://127.0.0.1:8080/fhir/../admin", "outside the base path"),  # requests removes the dot segment
    ("http://127.0.0.1:8080/fhir/%2e%2e/admin", "dot segment or encoded slash in path"),
    ("http://127.0.0.1:8080/fhir/a%2fb", "dot segment or encoded slash in path"),
    ("http://127.0.0.1:99999/fhir/x", "not a valid URL"),
    ("ftp://127.0.0.1:8080/fhir/x", "only http and https URLs"),
    ("//127.0.0.1:8080/fhir/x", "only http and https URLs"),
    ("http://[::1/fhir/x", "not a valid URL"),
])
def test_judge_refuses(url: str, reason: str) -> None:
    with pytest.raises(RefusedUrl) as refused:
        outbound_url(url, BASE)
    assert refused.value.reason == reason
    assert url_problem(url, BASE) == reason


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/fhir", "http://127.0.0.1:8080/fhir/", "http://127.0.0.1:8080/fhir/Observation?page=2",
    "HTTP://127.0.0.1:8080/fhir/Observation?_id=a,b&x=%20", "http://127.0.0.1:8080/fhir/Observation#frag",
])
def test_judge_accepts_what_lies_under_the_base(url: str) -> None:
    accepted = outbound_url(url, BASE)
    assert origin_of(accepted) == Origin("http", "127.0.0.1", 8080)


def test_default_ports_are_the_same_origin() -> None:
    assert outbound_url("https://ehr.example:443/fhir/x", "https://ehr.example/fhir") == "https://ehr.example:443/fhir/x"


class Recorder(HTTPAdapter):
    """Records the connection pool requests picks for a request (scheme, host, port), then stops."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[Origin] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        pool = self.get_connection_with_tls_context(request, True, kwargs.get("proxies"), None)
        self.opened.append(Origin(pool.scheme, pool.host.strip("[]").lower(), pool.port))
        raise requests.ConnectionError("recorded, not sent")


_RECORDER = Recorder()
_SESSION = requests.Session()
_SESSION.trust_env = False  # no proxies from the environment
_SESSION.mount("http://", _RECORDER)
_SESSION.mount("https://", _RECORDER)


def connection_for(url: str) -> Origin:
    """Where `requests` would connect for *url*."""
    with pytest.raises(requests.ConnectionError):
        _SESSION.get(url, allow_redirects=False, timeout=1)
    return _RECORDER.opened[-1]


ALLOWED = Origin("http", "127.0.0.1", 8080)
PIECES = ["http://", "https://", "HTTP://", "//", "127.0.0.1", "127.0.0.2", "localhost", "[::1]", ":8080", ":9",
          ":80", ":", "@", "\\", "/", "/fhir", "/fhir/", "/x", "?", "#", "%", "%2e", "%40", "%5c", "..", ".",
          " ", "\t", "\n", "\x00", "é", "\u3002", "user:pw", ";", "&", "=", "[", "]", "evil.example"]


@seed(20261202)
@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.sampled_from(PIECES), min_size=1, max_size=10),
       prefix=st.sampled_from(["", "http://127.0.0.1:8080/fhir/", "http://127.0.0.1:8080", "http://127.0.0.1"]))
def test_whenever_the_judge_accepts_requests_connects_to_the_allowlisted_origin(parts: list[str],
                                                                                prefix: str) -> None:
    url = prefix + "".join(parts)
    try:
        accepted = outbound_url(url, BASE)
    except RefusedUrl:
        return
    assert connection_for(accepted) == ALLOWED  # what the client fetches
    assert connection_for(url) == ALLOWED  # and the original string, prepared again by requests


def test_the_property_generator_reaches_the_attack() -> None:
    """The generator can spell the attack (so the property above covers it); the judge refuses it."""
    url = "http://127.0.0.1:8080/fhir/" + "".join(["@", "\\"])
    assert url_problem(url, BASE) == "backslash in URL"
    assert connection_for("http://127.0.0.1:9\\@127.0.0.1:8080/fhir/x") == Origin("http", "127.0.0.1", 9)


# -- every outbound call goes through the judge --------------------------------------------------------------


def test_fhir_client_refuses_a_base_the_http_client_would_read_differently() -> None:
    with pytest.raises(ValueError, match="backslash"):
        FhirClient("http://127.0.0.1:9\\@127.0.0.1:8080/fhir")


def test_backslash_next_link_from_a_fhir_page(rules: Any, tmp_path: Path, threaded_httpserver: HTTPServer,
                                              listener: Listener, secret_token: str) -> None:
    """A FHIR server's page carries the attack: refused, reported as missing, the listener gets nothing."""
    fake = FakeFhir(threaded_httpserver).add(patient(), ketamine_given(), dipstick())
    fake.next_link["Observation"] = attack(listener.port, threaded_httpserver.port)
    with running(rules, tmp_path) as service:
        response = service.call(request_body(fhirServer=fake.base,
                                             fhirAuthorization=authorization(secret_token)))
    assert response.status_code == 200, response.text
    missing = {m["key"]: m["reason"]
               for m in response.json().get("extension", {}).get("org.kbladder-cds.missingData", [])}
    assert missing.get("observation") == "next link refused: backslash in URL"
    assert listener.connections == 0


def test_backslash_next_link_from_a_prefetched_bundle(rules: Any, tmp_path: Path, threaded_httpserver: HTTPServer,
                                                      listener: Listener, secret_token: str) -> None:
    """A prefetched Bundle carries the attack: not followed, the key is missing data, not an all-clear."""
    fake = FakeFhir(threaded_httpserver)
    with running(rules, tmp_path) as service:
        prefetch = prefetch_for(service, "patient-view", ketamine_given(), dipstick())
        prefetch["observation"]["link"] = [{"relation": "next",
                                            "url": attack(listener.port, threaded_httpserver.port)}]
        response = service.call(request_body(prefetch=prefetch, fhirServer=fake.base,
                                             fhirAuthorization=authorization(secret_token)))
    assert response.status_code == 200, response.text
    missing = {m["key"]: m["reason"]
               for m in response.json().get("extension", {}).get("org.kbladder-cds.missingData", [])}
    assert missing.get("observation") == "next link refused: backslash in URL"
    assert listener.connections == 0
    assert fake.requests == []


def test_fhir_server_with_a_backslash_is_refused_before_any_call(rules: Any, tmp_path: Path,
                                                                 listener: Listener, secret_token: str) -> None:
    with running(rules, tmp_path) as service:
        body = request_body(fhirServer=f"http://127.0.0.1:{listener.port}\\@127.0.0.1:1/fhir",
                            fhirAuthorization=authorization(secret_token))
        response = service.call(body)
    assert response.status_code == 400
    assert "fhirServer" in response.text and "backslash" in response.text
    assert listener.connections == 0


def test_jwks_urls_are_judged(listener: Listener) -> None:
    with pytest.raises(ConfigError, match="backslash"):
        Issuer(iss="https://ehr.example", jku=(f"http://127.0.0.1:{listener.port}\\@127.0.0.1:1/jwks",)).check(())
    cache = JwksCache(timeout_s=0.5)
    assert cache.key(f"http://127.0.0.1:{listener.port}\\@127.0.0.1:1/jwks", "k1") is None
    assert listener.connections == 0


def test_medication_reads_stay_under_the_base(threaded_httpserver: HTTPServer, secret_token: str) -> None:
    """The Medication read is built from the base like every query and judged like every URL."""
    fake = FakeFhir(threaded_httpserver, prefix="/ehr/fhir")
    client = FhirClient(fake.base, secret_token, limits=FetchLimits(time_budget_s=5))
    with client:
        result = client.fetch("medication", "Medication?_id=ket-50")
    assert result.ok and all(r.path.startswith("/ehr/fhir/Medication") for r in fake.requests)
