"""What the blueprints share: settings, the live rule set and the store, kept on the Flask app."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from cds_service.config import Settings
from cds_service.rules_state import RulesState
from cds_service.store import Store

EXTENSION = "kbladder"


@dataclass(frozen=True, slots=True)
class ServiceContext:
    settings: Settings
    rules: RulesState
    store: Store | None


def service_context() -> ServiceContext:
    """The context of the app handling the current request."""
    return current_app.extensions[EXTENSION]
