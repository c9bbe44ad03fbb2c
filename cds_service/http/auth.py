"""JWT verification of CDS clients (checklist J1-J7): a ``before_request`` hook on /cds-services URLs.

Every call to discovery (configurable), a service or its feedback URL must carry
``Authorization: Bearer <JWT>`` signed by a trusted issuer. The checks, in order:

1. a Bearer token is present and is a JWS with ``alg`` in the issuer's list (never ``none`` or HS*),
   a ``kid``, and ``typ`` ``JWT`` when given;
2. ``iss`` is a configured issuer;
3. the key is chosen by ``kid``: from the issuer's out-of-band JWKS when it holds that ``kid`` (the token's
   ``jku`` is then ignored, never fetched); otherwise from a ``jku`` header that must be on the issuer's
   allowlist, or the issuer's configured jku URLs (fetched and cached),
   and must fit the algorithm (EC curve, RSA ≥ 2048 bits);
4. PyJWT verifies the signature, ``iss`` and ``aud`` (= ``public_url`` + request path, J7) and that
   ``iss``, ``aud``, ``exp``, ``iat`` and ``jti`` are present;
5. ``exp``, ``nbf``, ``iat`` against the app clock with leeway; ``exp`` not too far ahead;
6. ``tenant`` is allowlisted when the issuer lists tenants;
7. ``jti`` is claimed in the store until ``exp`` + leeway (replay refused across workers and hosts).

Any failure → 401 with an OperationOutcome (``code: login``, ``diagnostics: invalid token``) and a
``WWW-Authenticate: Bearer`` header. The reason is logged (never the token), not returned.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from flask import Flask, Response, g, request

from cds_service.config import AuthSettings, Issuer, Settings
from cds_service.security.jwks import JwksCache, keys_by_kid
from cds_service.store.outage import store_outage

from .errors import error_response
from .metrics import counting, metrics
from .state import service_context

log = logging.getLogger("cds_service.auth")

PROTECTED_PREFIX = "/cds-services"
REALM = "kbladder-cds"
_CURVES = {"ES256": "P-256", "ES384": "P-384"}
_FAMILY = {"ES": "EC", "RS": "RSA"}
MIN_RSA_BITS = 2048
MAX_TOKEN_CHARS = 16 * 1024


class AuthFailure(Exception):
    """Internal: why a token was refused (logged, never sent to the client)."""

    def __init__(self, reason: str, *, missing: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing


@dataclass(frozen=True, slots=True)
class VerifiedClient:
    """Who called: set on ``g.client`` after a token passed every check."""

    issuer: Issuer
    tenant: str | None
    jti: str


def install_auth(app: Flask, settings: Settings) -> None:
    """Register JWT verification (when ``settings.auth.enabled``) for discovery, service and feedback URLs."""
    auth = settings.auth
    if not auth.enabled:
        return
    cache = JwksCache(timeout_s=auth.jwks_timeout_s, min_refresh_interval_s=auth.jwks_min_refresh_interval_s,
                      max_age_s=auth.jwks_max_age_s)
    app.extensions["kbladder.jwks"] = cache
    static_keys = {issuer.iss: keys_by_kid(issuer.jwks) for issuer in auth.issuers if issuer.jwks is not None}

    @app.before_request
    def _authenticate() -> Response | None:
        if request.method == "OPTIONS" or not _protected(request.path, auth):
            return None  # CORS preflight carries no credentials (J8); /healthz is for the load balancer
        try:
            g.client = verify_request(settings, cache, static_keys)
        except AuthFailure as failure:
            log.warning("token refused", extra={"fields": {"reason": failure.reason, "path": request.path}})
            with counting():
                metrics().jwt_refused(failure.reason)
            return _unauthorized(failure)
        return None


def _protected(path: str, auth: AuthSettings) -> bool:
    if path.rstrip("/") == PROTECTED_PREFIX:
        return auth.protect_discovery
    return path.startswith(PROTECTED_PREFIX + "/")


def _unauthorized(failure: AuthFailure) -> Response:
    if failure.missing:  # RFC 6750 §3.1: no error code when the request had no credentials
        response = error_response(401, "bearer token required")
        response.headers["WWW-Authenticate"] = f'Bearer realm="{REALM}"'
    else:
        response = error_response(401, "invalid token")
        response.headers["WWW-Authenticate"] = f'Bearer realm="{REALM}", error="invalid_token"'
    response.headers["Cache-Control"] = "no-store"
    return response


def bearer_token() -> str:
    """The token of ``Authorization: Bearer <token>``; AuthFailure when absent or malformed."""
    header = request.headers.get("Authorization")
    if not header:
        raise AuthFailure("no Authorization header", missing=True)
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthFailure("Authorization is not a Bearer token", missing=True)
    if len(token) > MAX_TOKEN_CHARS:
        raise AuthFailure("token too long")
    return token


def verify_request(settings: Settings, cache: JwksCache, static_keys: Mapping[str, dict[str, dict[str, Any]]]
                   ) -> VerifiedClient:
    """Check the current request's bearer JWT; returns the verified client or raises AuthFailure."""
    auth = settings.auth
    ctx = service_context()
    token = bearer_token()
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise AuthFailure("not a JWS compact token") from None

    issuer = auth.issuer(unverified.get("iss"))
    if issuer is None:
        raise AuthFailure("iss not trusted")
    alg = header.get("alg")
    if alg not in issuer.algorithms:  # excludes none and HS* (config accepts only ES/RS)
        raise AuthFailure("alg not allowed")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AuthFailure("kid missing")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
        raise AuthFailure("typ is not JWT")

    jwk = _find_key(issuer, header, kid, cache, static_keys.get(issuer.iss, {}))
    key = _public_key(jwk, alg)

    audience = settings.audience_base + request.path.rstrip("/")
    try:
        claims = jwt.decode(
            token, key, algorithms=[alg], audience=[audience, audience + "/"], issuer=issuer.iss,
            options={"require": ["iss", "aud", "exp", "iat", "jti"],
                     "verify_exp": False, "verify_nbf": False, "verify_iat": False},  # checked below, app clock
        )
    except jwt.InvalidSignatureError:
        raise AuthFailure("bad signature") from None
    except jwt.InvalidAudienceError:
        raise AuthFailure("aud does not match this endpoint") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthFailure(f"claim {exc.claim} missing") from None
    except jwt.PyJWTError as exc:
        raise AuthFailure(f"rejected by verifier: {type(exc).__name__}") from None

    now = ctx.clock()
    exp = _check_times(claims, now, auth)
    tenant = claims.get("tenant")
    if issuer.tenants and tenant not in issuer.tenants:
        raise AuthFailure("tenant not allowed")
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti or len(jti) > 255:
        raise AuthFailure("jti malformed")
    if ctx.store is None:
        raise AuthFailure("no replay cache configured")  # fail closed
    # A store outage is not a credential problem: the check falls back to this process's cache (store/outage.py).
    fresh = store_outage().claim_jti(ctx.store, issuer.iss, jti, exp + timedelta(seconds=auth.leeway_s), now)
    if not fresh:
        raise AuthFailure("jti replayed")
    return VerifiedClient(issuer, tenant if isinstance(tenant, str) else None, jti)


def _find_key(issuer: Issuer, header: Mapping[str, Any], kid: str, cache: JwksCache,
              static: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The JWK for *kid*: the issuer's out-of-band keys first, whatever the token's ``jku``; else the
    token's allowlisted ``jku``; else the issuer's configured jku URLs.

    WHY out-of-band first: keys exchanged out of band (``jwks_file``/``jwks``) are what the issuer told us
    to trust. Clients such as the CDS Hooks sandbox put a ``jku`` pointing at their public origin on every
    token; with a known ``kid`` that URL is neither needed nor fetched (no outbound call, no SSRF surface).
    """
    found = static.get(kid)
    if found is not None:
        return found
    jku = header.get("jku")
    if jku is not None:
        if not isinstance(jku, str) or jku.rstrip("/") not in issuer.jku:
            raise AuthFailure("jku not allowlisted for this issuer")
        found = cache.key(jku.rstrip("/"), kid)
    else:
        for url in issuer.jku:
            found = cache.key(url, kid)
            if found is not None:
                break
    if found is None:
        raise AuthFailure("unknown kid")
    return found


def _public_key(jwk: Mapping[str, Any], alg: str) -> Any:
    """The key object for *alg*; refuses a key of another type, curve or algorithm (key confusion)."""
    if jwk.get("kty") != _FAMILY[alg[:2]]:
        raise AuthFailure("key type does not match alg")
    if jwk.get("alg") not in (None, alg):
        raise AuthFailure("key is bound to another alg")
    if alg in _CURVES and jwk.get("crv") != _CURVES[alg]:
        raise AuthFailure("key curve does not match alg")
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=alg).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
        raise AuthFailure("unusable key") from None
    if alg.startswith("RS") and key.key_size < MIN_RSA_BITS:
        raise AuthFailure("RSA key too short")
    return key


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthFailure(f"{name} is not a NumericDate")
    return float(value)


def _check_times(claims: Mapping[str, Any], now: datetime, auth: AuthSettings) -> datetime:
    """exp, nbf, iat against *now* with leeway; returns exp as a datetime."""
    t = now.timestamp()
    leeway = auth.leeway_s
    exp = _number(claims, "exp")
    iat = _number(claims, "iat")
    nbf = _number(claims, "nbf")
    assert exp is not None and iat is not None  # required above
    if exp + leeway <= t:
        raise AuthFailure("expired")
    if nbf is not None and nbf - leeway > t:
        raise AuthFailure("not yet valid (nbf)")
    if iat - leeway > t:
        raise AuthFailure("issued in the future (iat)")
    if exp - t > auth.max_token_lifetime_s + leeway:
        raise AuthFailure("exp too far in the future")
    return datetime.fromtimestamp(exp, UTC)
