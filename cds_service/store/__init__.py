"""Persistence through SQLAlchemy: feedback, audit and JWT replay cache (SQLite default, PostgreSQL)."""

from .store import CardIssue, Store, StoredFeedback, normalise_database_url

__all__ = ["CardIssue", "Store", "StoredFeedback", "normalise_database_url"]
