"""Alembic migrations of the store, shipped inside the package so an installed wheel can migrate."""
