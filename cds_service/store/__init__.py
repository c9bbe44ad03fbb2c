"""Persistence through SQLAlchemy: feedback, audit and JWT replay cache (SQLite default, PostgreSQL)."""
