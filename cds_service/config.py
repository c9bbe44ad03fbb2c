"""Service settings: defaults, then ``KBLADDER_*`` environment variables, then CLI options — validated once.

One frozen object is passed to the application factory, so nothing else reads the environment and a
test can build any configuration without touching ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cds_service.fhir.client import FetchLimits

ENV_PREFIX = "KBLADDER_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the setting (never a secret value)."""


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
    max_cards: int = 10
    cors_origins: tuple[str, ...] = ("*",)
    source_label: str = "k-bladder CDS"
    public_url: str | None = None
    allow_unauthenticated_fhir: bool = False
    require_https_fhir: bool = False
    reload_interval_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("port: expected 0-65535")
        for name in ("workers", "max_body_bytes", "max_cards"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a positive integer")
        if self.reload_interval_s < 0:
            raise ConfigError("reload_interval_s: expected >= 0 (0 disables polling)")
        if not self.cors_origins:
            raise ConfigError("cors_origins: expected at least one origin (or '*')")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults < environment < *overrides* (CLI options; ``None`` means "not given")."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        limits: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "fetch_limits":
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
