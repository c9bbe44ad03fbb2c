"""Alembic environment: always run on the connection the store hands over (no ini file, no URL here).

The store serialises migrations across processes itself (advisory lock / file lock) before calling
Alembic, so this file only binds the connection and the metadata.
"""

from __future__ import annotations

from alembic import context

from cds_service.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copy-and-move
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
