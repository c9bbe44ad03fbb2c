"""Service settings: defaults, then a YAML config file, then ``KBLADDER_*`` environment variables, then CLI
options — validated once.

One frozen object is passed to the application factory, so nothing else reads the environment and a
test can build any configuration without touching ``os.environ``. The config file (``--config`` or
``KBLADDER_CONFIG``) is the only place for JWT settings (trusted issuers, keys, FHIR-server allowlists);
every problem in it is reported as ``file:line:col: message`` (docs/configuration.md).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cds_service.fhir.client import FetchLimits
from cds_service.security.urls import url_problem

ENV_PREFIX = "KBLADDER_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the setting (never a secret value).

    *path* (e.g. ``("auth", "issuers", 0, "jku")``) lets the config-file loader add ``file:line:col``.
    """

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.path = path


#: Asymmetric algorithms we can verify. ``none`` and every HS* are never accepted (checklist J4).
SUPPORTED_ALGORITHMS = frozenset({"ES256", "ES384", "RS256", "RS384"})
DEFAULT_ALGORITHMS = ("ES384", "RS384")
#: CDS Hooks versions an EHR may be configured to speak (``cds_hooks_version``).
CDS_HOOKS_VERSIONS = ("2.0", "3.0")


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost`` (what a bind address or a URL host may be to count as local)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(value: str, where: tuple[str | int, ...], *, what: str) -> str:
    """An absolute https URL (http only for a loopback host); returns it without a trailing slash."""
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ConfigError(f"{what}: not a URL", where) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what}: expected an absolute https URL", where)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(f"{what}: https is required (http only for loopback)", where)
    if parts.query or parts.fragment:
        raise ConfigError(f"{what}: no query or fragment allowed", where)
    refused = url_problem(value)  # what the HTTP client would fetch must be what was configured
    if refused is not None:
        raise ConfigError(f"{what}: {refused}", where)
    return value.rstrip("/")


@dataclass(frozen=True)
class Issuer:
    """One trusted CDS client (EHR): its ``iss``, where its keys come from, what it may ask of us.

    Keys come from ``jku`` URLs (an allowlist: a token's ``jku`` header must be one of them; a token
    without ``jku`` uses them in order) and/or ``jwks`` (a JWKS exchanged out of band, inline or from
    ``jwks_file``; used for tokens without ``jku``).
    """

    iss: str
    jku: tuple[str, ...] = ()
    jwks: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    tenants: tuple[str, ...] = ()  # empty: any (or no) tenant
    fhir_servers: tuple[str, ...] = ()  # fhirServer values this client may send (no trailing slash)

    def check(self, where: tuple[str | int, ...]) -> None:
        if not isinstance(self.iss, str) or not self.iss:
            raise ConfigError("iss: expected a non-empty string", (*where, "iss"))
        if not self.jku and self.jwks is None:
            raise ConfigError(f"issuer {self.iss}: needs jku or jwks_file/jwks", where)
        if not self.algorithms:
            raise ConfigError("algorithms: expected at least one", (*where, "algorithms"))
        for i, alg in enumerate(self.algorithms):
            if alg not in SUPPORTED_ALGORITHMS:
                raise ConfigError(f"algorithms: {alg!r} not allowed (use {', '.join(sorted(SUPPORTED_ALGORITHMS))})",
                                  (*where, "algorithms", i))
        for i, url in enumerate(self.jku):
            _check_url(url, (*where, "jku", i), what="jku")
        for i, url in enumerate(self.fhir_servers):
            _check_url(url, (*where, "fhir_servers", i), what="fhir_servers")
        if self.jwks is not None:
            keys = self.jwks.get("keys") if isinstance(self.jwks, Mapping) else None
            if not isinstance(keys, list) or not keys:
                raise ConfigError("jwks: expected a JWKS object with a non-empty 'keys' list", (*where, "jwks"))
            for i, key in enumerate(keys):
                if not isinstance(key, Mapping) or not key.get("kid") or key.get("kty") not in ("EC", "RSA"):
                    raise ConfigError("jwks: every key needs a kid and kty EC or RSA", (*where, "jwks", "keys", i))
                if "d" in key:
                    raise ConfigError("jwks: private key material; configure public keys only",
                                      (*where, "jwks", "keys", i))


@dataclass(frozen=True)
class AuthSettings:
    """JWT verification of CDS clients (checklist J1-J7). Off by default: development on loopback only."""

    enabled: bool = False
    issuers: tuple[Issuer, ...] = ()
    leeway_s: float = 60.0  # clock skew tolerated on exp, nbf and iat
    max_token_lifetime_s: float = 3600.0  # exp further ahead than this (plus leeway) is refused
    protect_discovery: bool = True  # J1: the client sends its JWT on discovery calls too
    jwks_timeout_s: float = 3.0
    jwks_min_refresh_interval_s: float = 60.0  # unknown kid: refetch a JWKS at most this often
    jwks_max_age_s: float = 3600.0  # a cached JWKS older than this is refetched before use

    def check(self) -> None:
        for name in ("leeway_s", "max_token_lifetime_s", "jwks_timeout_s", "jwks_min_refresh_interval_s",
                     "jwks_max_age_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"auth.{name}: expected a number >= 0", ("auth", name))
        if self.jwks_timeout_s <= 0:
            raise ConfigError("auth.jwks_timeout_s: expected a number > 0", ("auth", "jwks_timeout_s"))
        seen: set[str] = set()
        for i, issuer in enumerate(self.issuers):
            issuer.check(("auth", "issuers", i))
            if issuer.iss in seen:
                raise ConfigError(f"auth.issuers: {issuer.iss} listed twice", ("auth", "issuers", i, "iss"))
            seen.add(issuer.iss)
        if self.enabled and not self.issuers:
            raise ConfigError("auth.issuers: at least one trusted issuer is required when auth is enabled",
                              ("auth", "enabled"))

    def issuer(self, iss: object) -> Issuer | None:
        return next((i for i in self.issuers if i.iss == iss), None) if isinstance(iss, str) else None


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to start. Field names map to ``KBLADDER_<NAME>`` variables."""

    host: str = "127.0.0.1"
    port: int = 8080
    rules_dir: str = "rules"
    site_file: str | None = None
    database_url: str = "sqlite:///var/kbladder.sqlite3"
    workers: int = 1
    max_body_bytes: int = 1024 * 1024
    fetch_limits: FetchLimits = field(default_factory=FetchLimits)
    max_cards: int = 3
    #: Resources across all prefetch keys of one request (a bigger prefetch is refused with 413).
    max_prefetch_entries: int = 20000
    #: Secret for the keyed hash that stands for the patient in logs; set it so that all workers agree.
    log_hash_key: str | None = None
    cors_origins: tuple[str, ...] = ("*",)
    source_label: str = "k-bladder CDS"
    public_url: str | None = None
    allow_unauthenticated_fhir: bool = False
    require_https_fhir: bool = False
    reload_interval_s: float = 2.0
    #: A reloaded rule set goes live only when its own rule tests (``<rules>/tests``) pass too.
    reload_requires_tests: bool = True
    #: Decision log: one row per rule per hook call (PHI-free), written off the request path.
    decision_log: bool = True
    #: /readyz fails while the store is unreachable (one replica's database is down). Turn off when every
    #: replica shares ONE database: an outage would take them all out of rotation, and hook calls are still
    #: answered without the store (store/outage.py); /healthz still says `degraded`.
    readiness_requires_store: bool = True
    #: Days the decision log, the card issue log and expired snoozes are kept (pruned in the background).
    retention_days: int = 400
    #: Records the background writer holds before it starts dropping (and counting) them.
    log_queue_capacity: int = 10000
    #: A candidate rule folder evaluated beside the live set on the same calls: logged, never shown.
    shadow_rules_dir: str | None = None
    #: Share of one core the shadow evaluation may take (it pauses after each call in proportion), so the
    #: live answers it runs beside are not slowed beyond it; calls beyond the shadow queue are counted, skipped.
    shadow_cpu_share: float = 0.2
    #: The same card shown at order-select is not repeated at order-sign (same patient, user, draft) within this.
    order_dedupe_window_s: int = 900
    auth: AuthSettings = field(default_factory=AuthSettings)
    #: Serve with auth off on a non-loopback address anyway (never in production; see docs/security.md).
    insecure_no_auth_on_public_interface: bool = False
    #: The CDS Hooks version the EHR speaks. "3.0" adds ``version``/``hookVersion`` to discovery; strict
    #: 2.0 validators refuse members they do not know, so 2.0 (the default) announces neither.
    cds_hooks_version: str = "2.0"
    #: Rule-set version (``kbladder rules check`` prints it) this replica must serve to be ready (/readyz):
    #: replicas behind one load balancer then never answer with different rules.
    pinned_rules_version: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("port: expected 0-65535")
        for name in ("workers", "max_body_bytes", "max_cards", "max_prefetch_entries", "retention_days",
                     "log_queue_capacity"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a positive integer")
        if not 0 < self.shadow_cpu_share <= 1:
            raise ConfigError("shadow_cpu_share: expected a fraction in (0, 1]")
        if self.order_dedupe_window_s < 0:
            raise ConfigError("order_dedupe_window_s: expected >= 0 (0 turns it off)")
        if self.reload_interval_s < 0:
            raise ConfigError("reload_interval_s: expected >= 0 (0 disables polling)")
        if not self.cors_origins:
            raise ConfigError("cors_origins: expected at least one origin (or '*')")
        if self.cds_hooks_version not in CDS_HOOKS_VERSIONS:
            raise ConfigError(f"cds_hooks_version: expected one of {', '.join(CDS_HOOKS_VERSIONS)}",
                              ("cds_hooks_version",))
        self.auth.check()
        if self.public_url is not None:
            _check_url(self.public_url, ("public_url",), what="public_url")
        if self.auth.enabled and not self.public_url:
            raise ConfigError("public_url: required when auth is enabled (it is the JWT audience)",
                              ("auth", "enabled"))

    @property
    def audience_base(self) -> str:
        """``public_url`` without a trailing slash: ``aud`` = this + the request path (J7)."""
        return (self.public_url or "").rstrip("/")

    def exposure_problem(self) -> str | None:
        """Why serving these settings would be unsafe (auth off on a non-loopback address), or None."""
        if self.auth.enabled or self.insecure_no_auth_on_public_interface or is_loopback_host(self.host):
            return None
        return (f"refusing to serve on {self.host} with authentication off: enable auth in the config file, "
                "or bind to 127.0.0.1, or pass --insecure-no-auth-on-public-interface")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, *, config: str | Path | None = None,
             **overrides: Any) -> Settings:
        """Defaults < config file < environment < *overrides* (CLI options; ``None`` means "not given").

        The config file is *config*, else ``KBLADDER_CONFIG``; its errors carry ``file:line:col``.
        """
        environ = os.environ if environ is None else environ
        config = config or environ.get(ENV_PREFIX + "CONFIG") or None
        if config is not None:
            from_file, located = _read_config_file(Path(config))
        else:
            from_file, located = {}, None
        try:
            return cls._load(environ, from_file, overrides)
        except ConfigError as exc:
            if located is not None and exc.path:
                raise ConfigError(str(located.problem(exc.path, str(exc))), exc.path) from None
            raise

    @classmethod
    def _load(cls, environ: Mapping[str, str], from_file: dict[str, Any], overrides: Mapping[str, Any]) -> Settings:
        values: dict[str, Any] = {k: v for k, v in from_file.items() if k != "fetch_limits"}
        limits: dict[str, Any] = dict(from_file.get("fetch_limits", {}))
        for f in dataclasses.fields(cls):
            if f.name in ("fetch_limits", "auth"):
                continue
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _convert(f.name, raw, _default_of(f))
        for f in dataclasses.fields(FetchLimits):
            raw = environ.get(f"{ENV_PREFIX}FETCH_{f.name.upper()}")
            if raw is not None:
                limits[f.name] = _convert(f"fetch_{f.name}", raw, f.default)
        for name, value in overrides.items():
            if value is None:
                continue
            if name.startswith("fetch_"):
                limits[name.removeprefix("fetch_")] = value
            else:
                values[name] = tuple(value) if name == "cors_origins" else value
        if limits:
            try:
                values["fetch_limits"] = FetchLimits(**limits)
            except TypeError as exc:
                raise ConfigError(f"fetch limits: {exc}") from exc
        try:
            return cls(**values)
        except TypeError as exc:  # an unknown override name
            raise ConfigError(str(exc)) from exc


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _convert(name: str, raw: str, default: Any) -> Any:
    """Turn an environment string into the type of the field's default."""
    text = raw.strip()
    try:
        if isinstance(default, bool):
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            return tuple(part.strip() for part in text.split(",") if part.strip())
    except ValueError:
        kind = "true/false" if isinstance(default, bool) else type(default).__name__
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}: expected {kind}") from None
    return (text or None) if default is None else text


# -- config file ---------------------------------------------------------------------------------------------

_AUTH_KEYS = {f.name for f in dataclasses.fields(AuthSettings)} - {"issuers"}
_ISSUER_KEYS = {"iss", "jku", "jwks", "jwks_file", "algorithms", "tenants", "fhir_servers"}


def _read_config_file(path: Path) -> tuple[dict[str, Any], Any]:
    """Settings keyword arguments from a YAML config file, and the located document (for positions)."""
    from cds_service.engine.yamlpos import YamlError, load_file

    try:
        located = load_file(path)
    except YamlError as exc:
        raise ConfigError(str(exc)) from None
    doc = located.data if located.data is not None else {}

    def fail(where: tuple[str | int, ...], message: str, *, key: bool = False) -> ConfigError:
        return ConfigError(str(located.problem(where, message, key=key)), where)

    if not isinstance(doc, dict):
        raise fail((), "expected a mapping of settings")
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    for name, raw in doc.items():
        where: tuple[str | int, ...] = (name,)
        if name == "auth":
            values["auth"] = _auth_from(raw, where, path.parent, fail)
        elif name == "fetch_limits":
            if not isinstance(raw, dict):
                raise fail(where, "fetch_limits: expected a mapping")
            limit_fields = {f.name: f for f in dataclasses.fields(FetchLimits)}
            limits = {}
            for key, value in raw.items():
                if key not in limit_fields:
                    raise fail((*where, key), f"fetch_limits: unknown key {key!r}", key=True)
                limits[key] = _typed(value, limit_fields[key].default, (*where, key), f"fetch_limits.{key}", fail)
            values["fetch_limits"] = limits
        elif name in fields and name not in ("fetch_limits",):
            values[name] = _typed(raw, _default_of(fields[name]), where, name, fail)
        else:
            raise fail(where, f"unknown setting {name!r} (see docs/configuration.md)", key=True)
    return values, located


def _typed(value: Any, default: Any, where: tuple[str | int, ...], name: str, fail: Any) -> Any:
    """*value* checked against the type of *default* (ints allowed for floats; lists for tuples)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:  # str or None
        ok = value is None or isinstance(value, str)
    if not ok:
        kind = "a list of strings" if isinstance(default, tuple) else (
            "true/false" if isinstance(default, bool) else type(default).__name__ if default is not None else "str")
        raise fail(where, f"{name}: expected {kind}")
    return value


def _str_list(raw: Any, where: tuple[str | int, ...], name: str, fail: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        raise fail(where, f"{name}: expected a string or a list of strings")
    return tuple(raw)


def _auth_from(raw: Any, where: tuple[str | int, ...], base: Path, fail: Any) -> AuthSettings:
    if not isinstance(raw, dict):
        raise fail(where, "auth: expected a mapping")
    kwargs: dict[str, Any] = {}
    defaults = AuthSettings()
    for key, value in raw.items():
        if key == "issuers":
            if not isinstance(value, list):
                raise fail((*where, key), "auth.issuers: expected a list")
            kwargs["issuers"] = tuple(_issuer_from(item, (*where, key, i), base, fail) for i, item in enumerate(value))
        elif key in _AUTH_KEYS:
            kwargs[key] = _typed(value, getattr(defaults, key), (*where, key), f"auth.{key}", fail)
        else:
            raise fail((*where, key), f"auth: unknown key {key!r}", key=True)
    return AuthSettings(**kwargs)


def _issuer_from(raw: Any, where: tuple[str | int, ...], base: Path, fail: Any) -> Issuer:
    if not isinstance(raw, dict):
        raise fail(where, "issuer: expected a mapping with iss and jku or jwks_file")
    for key in raw:
        if key not in _ISSUER_KEYS:
            raise fail((*where, key), f"issuer: unknown key {key!r}", key=True)
    if not isinstance(raw.get("iss"), str) or not raw["iss"]:
        raise fail((*where, "iss") if "iss" in raw else where, "issuer: iss is required (a string)")
    kwargs: dict[str, Any] = {"iss": raw["iss"]}
    for key in ("jku", "algorithms", "tenants", "fhir_servers"):
        if key in raw:
            values = _str_list(raw[key], (*where, key), key, fail)
            kwargs[key] = tuple(v.rstrip("/") for v in values) if key in ("jku", "fhir_servers") else values
    if "jwks" in raw and "jwks_file" in raw:
        raise fail((*where, "jwks_file"), "issuer: give jwks or jwks_file, not both", key=True)
    if "jwks" in raw:
        if not isinstance(raw["jwks"], dict):
            raise fail((*where, "jwks"), "jwks: expected a JWKS object ({keys: [...]})")
        kwargs["jwks"] = raw["jwks"]
    elif "jwks_file" in raw:
        if not isinstance(raw["jwks_file"], str):
            raise fail((*where, "jwks_file"), "jwks_file: expected a path")
        file = (base / raw["jwks_file"]).expanduser()
        try:
            kwargs["jwks"] = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise fail((*where, "jwks_file"), f"jwks_file: cannot read {file}: {type(exc).__name__}") from None
        except json.JSONDecodeError as exc:
            raise fail((*where, "jwks_file"), f"jwks_file: {file} is not JSON (line {exc.lineno})") from None
    issuer = Issuer(**kwargs)
    try:
        issuer.check(where)
    except ConfigError as exc:
        raise fail(exc.path or where, str(exc)) from None
    return issuer
