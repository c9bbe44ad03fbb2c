"""JWT verification of CDS clients (checklist J1-J7), the FHIR-server allowlist, config and no-secrets-in-logs.

Keys are generated at test time (EC P-384, EC P-256, RSA 3072) and the client JWKS is served over loopback
HTTP by pytest-httpserver, so the whole path (jku allowlist → fetch → kid → signature) runs for real.
Every refused token is checked twice: the client gets a bare 401, and the log names the reason we expect
(so an attack is refused for the right reason, not by accident).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask
from hookdata import dipstick, ketamine_given, prefetch, request_body, serving
from outcomes import error_field
from pytest_httpserver import HTTPServer
from test_service_run import _start, _stop

from cds_service.app import create_app
from cds_service.cli import main as cli_main
from cds_service.config import AuthSettings, ConfigError, Issuer, Settings
from cds_service.logjson import JsonFormatter
from cds_service.rules_state import RulesState
from cds_service.store import Store

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
ISS = "https://ehr.example.org"
PUBLIC = "https://cds.example.org"
PV = "kbladder-patient-view"
HOOK_PATH = f"/cds-services/{PV}"


# -- keys and tokens -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    alg: str
    kid: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        algo = jwt.algorithms.ECAlgorithm if self.alg.startswith("ES") else jwt.algorithms.RSAAlgorithm
        jwk = json.loads(algo.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="session")
def keys() -> dict[str, SigningKey]:
    return {
        "ES384": SigningKey("ES384", "ec-384", ec.generate_private_key(ec.SECP384R1())),
        "RS384": SigningKey("RS384", "rsa-3072", rsa.generate_private_key(public_exponent=65537, key_size=3072)),
        "ES256": SigningKey("ES256", "ec-256", ec.generate_private_key(ec.SECP256R1())),
    }


def claims(path: str = HOOK_PATH, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISS, "aud": PUBLIC + path, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4()),
            "tenant": "hospital-1", "sub": "client-id"}  # sub: an extra claim (Epic sends it), tolerated
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: SigningKey, payload: dict[str, Any], *, jku: str | None, **header: Any) -> str:
    headers: dict[str, Any] = {"kid": key.kid, "typ": "JWT", **header}
    if jku is not None:
        headers["jku"] = jku
    return jwt.encode(payload, key.private, algorithm=key.alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], signer: Any = None) -> str:
    """A compact JWS built by hand (for attacks PyJWT refuses to produce)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = signer(signing_input.encode()) if signer else b""
    return f"{signing_input}.{b64(signature)}"


# -- the service ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rules() -> RulesState:
    return RulesState([RULES], reload_interval_s=0)


@dataclass
class Env:
    app: Flask
    store: Store
    jwks_server: HTTPServer
    jku: str
    keys: dict[str, SigningKey]

    def token(self, alg: str = "ES384", path: str = HOOK_PATH, *, jku: str | None = "default", **claim_overrides: Any
              ) -> str:
        return sign(self.keys[alg], claims(path, **claim_overrides), jku=self.jku if jku == "default" else jku)

    def call(self, token: str | None, path: str = HOOK_PATH, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        with self.app.test_client() as client:
            if path == "/cds-services":
                return client.get(path, headers=headers)
            return client.post(path, json=body if body is not None else hook_body(), headers=headers)


def hook_body(**extra: Any) -> dict[str, Any]:
    return request_body(prefetch=prefetch(ketamine_given()), **extra)


def hook_body_with_card() -> dict[str, Any]:
    """Ketamine and blood on a dipstick: KB-02 gives a card (with suggestions) to give feedback on."""
    return request_body(prefetch=prefetch(ketamine_given(days=-3), dipstick(days=-1)))


def auth_settings(jku: str, db: Path, **auth: Any) -> Settings:
    issuer = Issuer(ISS, jku=(jku,), tenants=("hospital-1",), fhir_servers=auth.pop("fhir_servers", ()),
                    algorithms=auth.pop("algorithms", ("ES384", "RS384")))
    return Settings(database_url=f"sqlite:///{db}", reload_interval_s=0, public_url=PUBLIC + "/",
                    auth=AuthSettings(enabled=True, issuers=(issuer,), **auth))


def make_env(httpserver: HTTPServer, keys: dict[str, SigningKey], rules: RulesState, db: Path,
             **auth: Any) -> Env:
    httpserver.expect_request("/jwks.json").respond_with_json(
        {"keys": [keys[a].public_jwk() for a in ("ES384", "RS384", "ES256")]})
    jku = httpserver.url_for("/jwks.json")
    store = Store(f"sqlite:///{db}")
    app = create_app(auth_settings(jku, db, **auth), rules_state=rules, store=store)
    return Env(app, store, httpserver, jku, keys)


@pytest.fixture
def env(httpserver: HTTPServer, keys: dict[str, SigningKey], rules: RulesState, tmp_path: Path) -> Iterator[Env]:
    made = make_env(httpserver, keys, rules, tmp_path / "kb.sqlite3")
    yield made
    made.store.dispose()


def refusal_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.fields["reason"] for r in caplog.records if r.name == "cds_service.auth" and hasattr(r, "fields")
            and "reason" in r.fields]


def assert_refused(response: Any, caplog: pytest.LogCaptureFixture, reason: str) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.get_json() == {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "login", "diagnostics": "invalid token"}]}
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="kbladder-cds", error="invalid_token"'
    assert refusal_reasons(caplog)[-1] == reason


# -- accepted ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_valid_token_is_accepted_on_discovery_service_and_feedback(env: Env, alg: str) -> None:
    assert env.call(env.token(alg, "/cds-services"), "/cds-services").status_code == 200
    response = env.call(env.token(alg), HOOK_PATH, hook_body_with_card())
    assert response.status_code == 200, response.get_data(as_text=True)
    card = response.get_json()["cards"][0]  # feedback is taken only for cards this service issued
    feedback = {"feedback": [{"card": card["uuid"], "outcome": "accepted",
                              "outcomeTimestamp": "2026-11-23T10:00:00Z",
                              "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}]}]}
    path = f"{HOOK_PATH}/feedback"
    response = env.call(env.token(alg, path), path, feedback)
    assert response.status_code == 200, response.get_data(as_text=True)


def test_audience_as_array_and_with_trailing_slash(env: Env) -> None:
    assert env.call(env.token(aud=["https://other.example", PUBLIC + HOOK_PATH])).status_code == 200
    assert env.call(env.token(aud=PUBLIC + HOOK_PATH + "/")).status_code == 200


def test_token_without_jku_uses_the_issuers_configured_jku(env: Env) -> None:
    assert env.call(env.token(jku=None)).status_code == 200


def test_preflight_and_healthz_need_no_token(env: Env) -> None:
    with env.app.test_client() as client:
        assert client.options(HOOK_PATH, headers={"Origin": "https://ehr.example.org"}).status_code == 200
        health = client.get("/healthz").get_json()
    assert health["auth"] == {"enabled": True}


# -- refused -------------------------------------------------------------------------------------------------


def test_missing_header_is_401_without_error_code(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    response = env.call(None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="kbladder-cds"'
    assert refusal_reasons(caplog) == ["no Authorization header"]
    with env.app.test_client() as client:
        assert client.get("/cds-services", headers={"Authorization": "Basic dXNlcjpwdw=="}).status_code == 401


@pytest.mark.parametrize(("case", "reason"), [
    ("expired", "expired"),
    ("not yet valid", "not yet valid (nbf)"),
    ("issued in the future", "issued in the future (iat)"),
    ("exp too far ahead", "exp too far in the future"),
    ("wrong aud", "aud does not match this endpoint"),
    ("aud of another service", "aud does not match this endpoint"),
    ("wrong iss", "iss not trusted"),
    ("wrong tenant", "tenant not allowed"),
    ("no jti", "claim jti missing"),
    ("no exp", "claim exp missing"),
    ("exp NaN", "exp is not a NumericDate"),
    ("exp as text", "exp is not a NumericDate"),
])
def test_bad_claims_are_401(env: Env, caplog: pytest.LogCaptureFixture, case: str, reason: str) -> None:
    now = int(time.time())
    overrides: dict[str, Any] = {
        "expired": {"exp": now - 61, "iat": now - 400},  # 60 s leeway: one second past it
        "not yet valid": {"nbf": now + 120},
        "issued in the future": {"iat": now + 120},
        "exp too far ahead": {"exp": now + 7 * 24 * 3600},
        "wrong aud": {"aud": "https://attacker.example/cds-services/kbladder-patient-view"},
        "aud of another service": {"aud": PUBLIC + "/cds-services/kbladder-order-sign"},
        "wrong iss": {"iss": "https://attacker.example"},
        "wrong tenant": {"tenant": "hospital-2"},
        "no jti": {"jti": None},
        "no exp": {"exp": None},
        "exp NaN": {"exp": float("nan")},
        "exp as text": {"exp": str(now + 300)},
    }[case]
    assert_refused(env.call(env.token(**overrides)), caplog, reason)


def test_leeway_accepts_a_token_expired_within_60_s(env: Env) -> None:
    now = int(time.time())
    assert env.call(env.token(exp=now - 30, iat=now - 300, nbf=now + 30)).status_code == 200


def test_jku_not_on_the_issuers_allowlist_is_never_fetched(env: Env, caplog: pytest.LogCaptureFixture,
                                                          other_httpserver: HTTPServer, keys: Any) -> None:
    evil = other_httpserver.url_for("/jwks.json")
    other_httpserver.expect_request("/jwks.json").respond_with_json({"keys": [keys["ES384"].public_jwk()]})
    assert_refused(env.call(env.token(jku=evil)), caplog, "jku not allowlisted for this issuer")
    assert other_httpserver.log == []


def test_unknown_kid_refetches_at_most_once_per_interval(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    cache = env.app.extensions["kbladder.jwks"]
    assert env.call(env.token()).status_code == 200
    assert cache.fetches == 1
    stranger = SigningKey("ES384", "never-published", ec.generate_private_key(ec.SECP384R1()))
    for _ in range(3):
        token = sign(stranger, claims(), jku=env.jku)
        assert_refused(env.call(token), caplog, "unknown kid")
    assert cache.fetches == 1  # jwks_min_refresh_interval_s (60 s) has not passed
    assert len(env.jwks_server.log) == 1


def test_rotated_key_is_picked_up_by_refetch_on_unknown_kid(httpserver: HTTPServer, keys: Any, rules: RulesState,
                                                           tmp_path: Path) -> None:
    env = make_env(httpserver, keys, rules, tmp_path / "kb.sqlite3", jwks_min_refresh_interval_s=0)
    assert env.call(env.token()).status_code == 200
    new = SigningKey("ES384", "ec-384-2027", ec.generate_private_key(ec.SECP384R1()))
    httpserver.clear()
    httpserver.expect_request("/jwks.json").respond_with_json({"keys": [new.public_jwk()]})
    assert env.call(sign(new, claims(), jku=env.jku)).status_code == 200
    env.store.dispose()


def test_tampered_payload_is_401(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    header, _payload, signature = env.token().split(".")
    forged = b64(json.dumps(claims(tenant="hospital-1", sub="admin")).encode())
    assert_refused(env.call(f"{header}.{forged}.{signature}"), caplog, "bad signature")


def test_alg_none_is_401(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    token = handmade({"alg": "none", "typ": "JWT", "kid": "ec-384", "jku": env.jku}, claims())
    assert_refused(env.call(token), caplog, "alg not allowed")


@pytest.mark.parametrize("key_form", ["pem", "jwk-json"])
def test_hs256_signed_with_the_public_key_is_401(env: Env, caplog: pytest.LogCaptureFixture, key_form: str) -> None:
    """Key confusion: an attacker signs with HMAC, using our (public) RSA key as the shared secret."""
    rsa_key = env.keys["RS384"]
    secret = rsa_key.public_pem() if key_form == "pem" else json.dumps(rsa_key.public_jwk()).encode()
    token = handmade({"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid, "jku": env.jku}, claims(),
                     lambda data: hmac.new(secret, data, hashlib.sha256).digest())
    assert_refused(env.call(token), caplog, "alg not allowed")


def test_es384_header_over_an_rsa_kid_is_401(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """A signature by the EC key, presented under the RSA key's kid: the key must fit the alg."""
    ec_key = env.keys["ES384"]
    token = jwt.encode(claims(), ec_key.private, algorithm="ES384",
                       headers={"kid": env.keys["RS384"].kid, "jku": env.jku, "typ": "JWT"})
    assert_refused(env.call(token), caplog, "key type does not match alg")


def test_es256_is_refused_by_default_and_accepted_when_configured(env: Env, caplog: pytest.LogCaptureFixture,
                                                                  httpserver: HTTPServer, keys: Any,
                                                                  rules: RulesState, tmp_path: Path) -> None:
    assert_refused(env.call(env.token("ES256")), caplog, "alg not allowed")
    other = make_env(httpserver, keys, rules, tmp_path / "b.sqlite3", algorithms=("ES256", "ES384"))
    assert other.call(other.token("ES256")).status_code == 200
    other.store.dispose()


def test_replayed_jti_is_401(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    token = env.token()
    assert env.call(token).status_code == 200
    assert_refused(env.call(token), caplog, "jti replayed")


def test_replayed_jti_is_401_on_another_worker_sharing_the_store(httpserver: HTTPServer, keys: Any, rules: RulesState,
                                                                tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                                ) -> None:
    """Two app instances with their own engines on one SQLite file, as two gunicorn workers would be."""
    db = tmp_path / "shared.sqlite3"
    first, second = make_env(httpserver, keys, rules, db), make_env(httpserver, keys, rules, db)
    token = first.token()
    assert first.call(token).status_code == 200
    assert_refused(second.call(token), caplog, "jti replayed")
    assert first.call(first.token()).status_code == 200  # a fresh jti is still fine
    first.store.dispose()
    second.store.dispose()


def test_replay_across_processes_over_real_http(httpserver: HTTPServer, keys: Any, rules: RulesState,
                                               tmp_path: Path) -> None:
    """The second call comes from a separate serving process (subprocess) with its own store connection."""
    db = tmp_path / "shared.sqlite3"
    env = make_env(httpserver, keys, rules, db)
    token = env.token()
    script = f"""
import sys
sys.path.insert(0, {str(REPO / 'tests')!r})
from test_auth import auth_settings, hook_body
from cds_service.app import create_app
from cds_service.rules_state import RulesState
from cds_service.store import Store
from pathlib import Path
db = Path({str(db)!r})
app = create_app(auth_settings({env.jku!r}, db), rules_state=RulesState([{str(RULES)!r}], reload_interval_s=0),
                 store=Store(f"sqlite:///{{db}}"))
with app.test_client() as c:
    r = c.post({HOOK_PATH!r}, json=hook_body(), headers={{"Authorization": "Bearer " + sys.stdin.read()}})
print(r.status_code)
"""
    with serving(env.app) as url:
        first = requests.post(url + HOOK_PATH, json=hook_body(), headers={"Authorization": f"Bearer {token}"},
                              timeout=30)
    assert first.status_code == 200
    proc = subprocess.run([sys.executable, "-c", script], input=token, capture_output=True, text=True, timeout=120,
                          cwd=REPO, check=False)
    assert proc.stdout.strip().splitlines()[-1] == "401", proc.stderr[-2000:]
    env.store.dispose()


@pytest.mark.parametrize(("header", "reason"), [
    ({"typ": "at+jwt"}, "typ is not JWT"),
    ({"kid": ""}, "kid missing"),
    ({"kid": None}, "kid missing"),
])
def test_bad_header_is_401(env: Env, caplog: pytest.LogCaptureFixture, header: dict[str, Any], reason: str) -> None:
    key = env.keys["ES384"]
    headers = {k: v for k, v in {"kid": key.kid, "typ": "JWT", "jku": env.jku, **header}.items() if v is not None}
    token = jwt.encode(claims(), key.private, algorithm="ES384", headers=headers)
    assert_refused(env.call(token), caplog, reason)


def test_garbage_token_is_401(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    assert_refused(env.call("not-a-jwt"), caplog, "not a JWS compact token")


def test_jwks_server_down_is_401_and_not_hammered(httpserver: HTTPServer, keys: Any, rules: RulesState,
                                                  tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = make_env(httpserver, keys, rules, tmp_path / "kb.sqlite3")
    httpserver.clear()
    httpserver.expect_request("/jwks.json").respond_with_data("down", status=503)
    for _ in range(3):
        assert_refused(env.call(env.token()), caplog, "unknown kid")
    assert len(httpserver.log) == 1
    env.store.dispose()


def test_jwks_redirect_is_not_followed(httpserver: HTTPServer, other_httpserver: HTTPServer, keys: Any,
                                       rules: RulesState, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = make_env(httpserver, keys, rules, tmp_path / "kb.sqlite3")
    httpserver.clear()
    evil = other_httpserver.url_for("/jwks.json")
    httpserver.expect_request("/jwks.json").respond_with_data("", status=302, headers={"Location": evil})
    other_httpserver.expect_request("/jwks.json").respond_with_json({"keys": [keys["ES384"].public_jwk()]})
    assert_refused(env.call(env.token()), caplog, "unknown kid")
    assert other_httpserver.log == []
    env.store.dispose()


def test_discovery_can_be_left_open(httpserver: HTTPServer, keys: Any, rules: RulesState, tmp_path: Path) -> None:
    env = make_env(httpserver, keys, rules, tmp_path / "kb.sqlite3", protect_discovery=False)
    assert env.call(None, "/cds-services").status_code == 200
    assert env.call(None).status_code == 401
    env.store.dispose()


# -- FHIR-server allowlist -----------------------------------------------------------------------------------


def test_forged_fhir_server_gets_no_outbound_call(httpserver: HTTPServer, keys: Any, rules: RulesState,
                                                  tmp_path: Path, threaded_httpserver: HTTPServer,
                                                  other_httpserver: HTTPServer, secret_token: str) -> None:
    trusted = threaded_httpserver.url_for("/fhir")
    env = make_env(httpserver, keys, rules, tmp_path / "kb.sqlite3", fhir_servers=(trusted,))
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}
    threaded_httpserver.expect_request("/fhir/Observation").respond_with_json(empty)
    other_httpserver.expect_request("/fhir/Observation").respond_with_json(empty)
    auth = {"access_token": secret_token, "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
            "subject": "kbladder"}

    def body(server: str) -> dict[str, Any]:
        return request_body(prefetch=prefetch(ketamine_given(), omit=("observation",)), fhirServer=server,
                            fhirAuthorization=auth)

    forged = env.call(env.token(), body=body(other_httpserver.url_for("/fhir")))
    assert forged.status_code == 403
    assert error_field(forged.get_json()) == "fhirServer"
    assert other_httpserver.log == []  # the attacker's listener received nothing: no token leaked
    # Control: the allowlisted server is queried (so the listener above would have seen a call).
    assert env.call(env.token(), body=body(trusted + "/")).status_code == 200
    assert len(threaded_httpserver.log) >= 1
    env.store.dispose()


# -- configuration -------------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_file_with_jwks_file(tmp_path: Path, keys: Any, rules: RulesState) -> None:
    write(tmp_path / "ehr-jwks.json", json.dumps({"keys": [keys["RS384"].public_jwk()]}))
    config = write(tmp_path / "kbladder.yaml", f"""\
public_url: {PUBLIC}
database_url: sqlite:///{tmp_path / 'kb.sqlite3'}
auth:
  enabled: true
  leeway_s: 30
  issuers:
    - iss: {ISS}
      jwks_file: ehr-jwks.json
      algorithms: [RS384]
      tenants: [hospital-1]
      fhir_servers: [https://fhir.example.org/r4/]
""")
    settings = Settings.load({}, config=config)
    assert settings.auth.enabled and settings.auth.leeway_s == 30
    assert settings.auth.issuers[0].fhir_servers == ("https://fhir.example.org/r4",)
    assert Settings.load({"KBLADDER_CONFIG": str(config)}).public_url == PUBLIC
    store = Store(settings.database_url)
    app = create_app(replace(settings, reload_interval_s=0), rules_state=rules, store=store)
    token = sign(keys["RS384"], claims(), jku=None)
    with app.test_client() as client:
        assert client.post(HOOK_PATH, json=hook_body(), headers={"Authorization": f"Bearer {token}"}
                           ).status_code == 200
    store.dispose()


@pytest.mark.parametrize(("text", "where", "message"), [
    ("auth:\n  enabled: true\n  issuers:\n    - iss: x\n      jku: https://e/j\n      algorithms: [HS256]\n",
     ":6:20:", "'HS256' not allowed"),
    ("auth:\n  enabled: true\n  issuers:\n    - iss: x\n      jku: http://ehr.example.org/jwks\n",
     ":5:12:", "https is required"),
    ("public_url: https://c\nauth:\n  enabeld: true\n", ":3:3:", "unknown key 'enabeld'"),
    ("auth:\n  enabled: true\n  issuers:\n    - iss: x\n      jku: https://e/j\n", ":2:12:",
     "public_url: required when auth is enabled"),
    ("auth:\n  enabled: yes please\n", ":2:12:", "expected true/false"),
    ("auth:\n  enabled: true\n  issuers:\n    - iss: x\n", ":4:7:", "needs jku or jwks_file"),
    ("port: [1\n", ":2:1:", "YAML syntax"),
    ("auth:\n  issuers:\n    - iss: x\n      jwks: {keys: [{kid: a, kty: EC, d: secret}]}\n", ":4:21:",
     "private key material"),
])
def test_config_errors_name_file_line_and_column(tmp_path: Path, text: str, where: str, message: str) -> None:
    config = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as caught:
        Settings.load({}, config=config)
    assert str(caught.value).startswith(str(config) + where), str(caught.value)
    assert message in str(caught.value)


def test_cli_stops_on_a_config_error_with_its_position(tmp_path: Path) -> None:
    config = write(tmp_path / "bad.yaml", "auth:\n  enabled: true\n")
    result = CliRunner().invoke(cli_main, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert f"{config}:2:12:" in result.output


# -- development mode ----------------------------------------------------------------------------------------


def test_auth_off_is_loud_in_healthz(rules: RulesState) -> None:
    app = create_app(Settings(reload_interval_s=0), rules_state=rules, store=Store("sqlite://"))
    with app.test_client() as client:
        assert client.get("/cds-services").status_code == 200  # default: auth off, loopback
        health = client.get("/healthz").get_json()
    assert health["auth"]["enabled"] is False
    assert "AUTHENTICATION IS OFF" in health["auth"]["warning"]


def test_auth_off_on_a_public_interface_needs_the_insecure_flag() -> None:
    assert Settings(host="127.0.0.1").exposure_problem() is None
    assert Settings(host="::1").exposure_problem() is None
    assert "--insecure-no-auth-on-public-interface" in (Settings(host="0.0.0.0").exposure_problem() or "")
    assert Settings(host="0.0.0.0", insecure_no_auth_on_public_interface=True).exposure_problem() is None
    result = CliRunner().invoke(cli_main, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 2  # refused before binding


# -- logs ----------------------------------------------------------------------------------------------------


def test_no_patient_name_token_or_jwt_in_logs(caplog: pytest.LogCaptureFixture, secret_token: str,
                                               threaded_httpserver: HTTPServer, keys: Any, rules: RulesState,
                                               httpserver: HTTPServer, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    trusted = threaded_httpserver.url_for("/fhir")
    env = make_env(httpserver, keys, rules, tmp_path / "logs.sqlite3", fhir_servers=(trusted,))
    name = "Zyxwvutsrq Qqqlogcanary"
    threaded_httpserver.expect_request("/fhir/Observation").respond_with_json(
        {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []})
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1992-03-04",
               "name": [{"family": name.split()[1], "given": [name.split()[0]]}]}
    data = prefetch(ketamine_given(), omit=("observation",))
    data["patient"] = patient
    auth = {"access_token": secret_token, "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
            "subject": "kbladder"}
    jwts = [env.token() for _ in range(3)]
    assert env.call(jwts[0], body=request_body(prefetch=data, fhirServer=trusted, fhirAuthorization=auth)
                    ).status_code == 200
    assert env.call(jwts[0], body=request_body(prefetch=data)).status_code == 401  # replay
    forged = env.call(jwts[1], body=request_body(prefetch=data, fhirServer="https://evil.example/fhir",
                                                 fhirAuthorization=auth))
    assert forged.status_code == 403
    tampered = jwts[2][:-6] + "AAAAAA"
    assert env.call(tampered, body=request_body(prefetch=data)).status_code == 401
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records]
    assert any('"reason": "jti replayed"' in line for line in lines)  # the log did capture the auth path
    for secret in [name.split()[0], name.split()[1], secret_token, *jwts, tampered, *(t.split(".")[2] for t in jwts)]:
        assert not any(secret in line for line in lines), "secret value logged"
    env.store.dispose()


# -- kbladder serve, for real --------------------------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def test_serve_with_config_requires_tokens_and_dev_mode_warns(tmp_path: Path, keys: Any, httpserver: HTTPServer,
                                                               processes: list[Any]) -> None:
    dev, url = _start(processes, tmp_path / "dev")
    assert requests.get(f"{url}/cds-services", timeout=10).status_code == 200
    lines = [json.loads(line) for line in _stop(dev).splitlines() if line.strip()]
    assert any(line["level"] == "warning" and "AUTHENTICATION IS OFF" in line["msg"] for line in lines)

    httpserver.expect_request("/jwks.json").respond_with_json({"keys": [keys["ES384"].public_jwk()]})
    jku = httpserver.url_for("/jwks.json")
    (tmp_path / "prod").mkdir()
    config = write(tmp_path / "prod" / "kbladder.yaml", f"""\
public_url: {PUBLIC}
auth:
  enabled: true
  issuers:
    - iss: {ISS}
      jku: {jku}
""")
    prod, url = _start(processes, tmp_path / "prod", "--config", str(config))
    assert requests.get(f"{url}/cds-services", timeout=10).status_code == 401
    token = sign(keys["ES384"], claims("/cds-services"), jku=jku)
    assert requests.get(f"{url}/cds-services", timeout=10, headers={"Authorization": f"Bearer {token}"}
                        ).status_code == 200
    err = _stop(prod)
    assert token not in err and "AUTHENTICATION IS OFF" not in err


def test_out_of_band_key_is_trusted_whatever_the_jku(tmp_path: Path, keys: Any, rules: RulesState) -> None:
    """The sandbox signs with a jku at its public origin; an issuer configured with jwks_file still trusts the kid.

    The jku here points at a listener that is never reached (and is not on any allowlist): the key comes
    from the file, nothing is fetched. A kid that is NOT in the file still needs an allowlisted jku.
    """
    with socket.socket() as unreachable:  # bound, never listening: any fetch would fail or hang
        unreachable.bind(("127.0.0.1", 0))
        jku = f"http://127.0.0.1:{unreachable.getsockname()[1]}/.well-known/jwks.json"
        write(tmp_path / "ehr-jwks.json", json.dumps({"keys": [keys["ES384"].public_jwk()]}))
        config = write(tmp_path / "kbladder.yaml", f"""\
public_url: {PUBLIC}
database_url: sqlite:///{tmp_path / 'kb.sqlite3'}
auth:
  enabled: true
  issuers:
    - iss: {ISS}
      jwks_file: ehr-jwks.json
""")
        settings = replace(Settings.load({}, config=config), reload_interval_s=0)
        store = Store(settings.database_url)
        app = create_app(settings, rules_state=rules, store=store)
        cache = app.extensions["kbladder.jwks"]
        with app.test_client() as client:
            good = sign(keys["ES384"], claims(), jku=jku)
            assert client.post(HOOK_PATH, json=hook_body(), headers={"Authorization": f"Bearer {good}"}
                               ).status_code == 200
            stranger = sign(keys["RS384"], claims(), jku=jku)  # kid not in the file: the jku must be allowlisted
            assert client.post(HOOK_PATH, json=hook_body(), headers={"Authorization": f"Bearer {stranger}"}
                               ).status_code == 401
        assert cache.fetches == 0
        store.dispose()
