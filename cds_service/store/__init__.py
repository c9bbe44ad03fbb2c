"""Persistence through SQLAlchemy: feedback, audit and JWT replay cache (SQLite default, PostgreSQL)."""

from .protocol import CardIssue, ServiceStore
from .store import Store, StoredFeedback, normalise_database_url

__all__ = ["CardIssue", "ServiceStore", "Store", "StoredFeedback", "normalise_database_url"]
