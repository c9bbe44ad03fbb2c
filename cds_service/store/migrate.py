"""Bring a store's database to the newest schema with Alembic, safely when several processes start at once.

Three cases: an empty database (run every revision), a database made by the old ``create_all`` (its
tables exist but no ``alembic_version``: stamp the baseline, then upgrade — no row is touched), and a
migrated one (upgrade from its revision, usually nothing to do). Processes serialise on a PostgreSQL
advisory lock or, for SQLite files, an OS file lock beside the database.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

__all__ = ["BASELINE", "current_revision", "head_revision", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"
_LEGACY_TABLES = frozenset({"feedback", "card_issue", "jwt_replay"})
_SCHEMA_LOCK_KEY = 0x6B626C6164  # "kblad": the same key create_all used, so old and new workers agree


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision shipped with this package."""
    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision (None: never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database or ""
    if engine.url.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        yield
        return
    lock_path = Path(database).expanduser().with_name(Path(database).name + ".migrate.lock")
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate *engine*'s database to *revision* (default: newest), adopting a pre-Alembic database."""
    with _file_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        config = _config(conn)
        tables = set(inspect(conn).get_table_names())
        if MigrationContext.configure(conn).get_current_revision() is None and tables >= _LEGACY_TABLES:
            command.stamp(config, BASELINE)  # made by create_all: the baseline is already there
        command.upgrade(config, revision)
