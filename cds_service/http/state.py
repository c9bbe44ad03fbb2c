"""What the blueprints share: settings, the live rule set and the store, kept on the Flask app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from flask import current_app

from cds_service.config import Settings
from cds_service.governance.service import Governance
from cds_service.rules_state import RulesState
from cds_service.store.protocol import ServiceStore

EXTENSION = "kbladder"


def wall_clock() -> datetime:
    """The current time; the only place the service reads the clock (the core is given ``now``)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ServiceContext:
    settings: Settings
    rules: RulesState
    store: ServiceStore | None
    clock: Callable[[], datetime] = field(default=wall_clock)
    governance: Governance | None = None


def service_context() -> ServiceContext:
    """The context of the app handling the current request."""
    return current_app.extensions[EXTENSION]
