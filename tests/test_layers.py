"""Import boundaries of docs/architecture.md: the core stays pure, only http/ speaks Flask.

Checked on the source (each module's own imports), so a violation names the file and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cds_service.store import ServiceStore, Store

PACKAGE = Path(__file__).resolve().parents[1] / "cds_service"
NETWORK_STORAGE_WEB = ("flask", "werkzeug", "requests", "sqlalchemy", "gunicorn")
EDGES = ("cds_service.http", "cds_service.store", "cds_service.fhir.client", "cds_service.app", "cds_service.serve")

#: package → module prefixes it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "clinical": (*NETWORK_STORAGE_WEB, *EDGES, "cds_service.fhir", "cds_service.engine", "cds_service.decision"),
    "engine": (*NETWORK_STORAGE_WEB, *EDGES, "cds_service.fhir", "cds_service.decision"),
    "cdshooks": (*NETWORK_STORAGE_WEB, *EDGES, "cds_service.engine", "cds_service.decision"),
    "decision": ("flask", "werkzeug", "sqlalchemy", "cds_service.http", "cds_service.store", "cds_service.app"),
    "fhir": ("flask", "sqlalchemy", "cds_service.http", "cds_service.store", "cds_service.decision"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_within_its_layer(package: str) -> None:
    bad = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: imports {name}"
        for path in sorted((PACKAGE / package).rglob("*.py"))
        for line, name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package])
    ]
    assert bad == []


def test_the_sqlalchemy_store_is_a_service_store() -> None:
    assert isinstance(Store("sqlite:///:memory:"), ServiceStore)
