"""A worker warms up before serving: one synthetic call through the pipeline, then start-up objects frozen."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import pytest

from cds_service.app import create_app
from cds_service.config import Settings
from cds_service.rules_state import RulesState
from cds_service.store import Store
from cds_service.warmup import warm_up

RULES = Path(__file__).resolve().parents[1] / "rules"


def test_warm_up_freezes_start_up_objects_and_leaves_no_trace(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'warm.sqlite3'}"
    store = Store(url)
    app = create_app(Settings(database_url=url, reload_interval_s=0),
                     rules_state=RulesState([RULES], reload_interval_s=0), store=store)
    try:
        with caplog.at_level(logging.INFO):
            assert warm_up(app) is app
        assert gc.get_freeze_count() > 10_000
        assert not [r for r in caplog.records if r.name == "cds_service.access"]  # not an HTTP request
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # the call itself succeeded
        assert any(r.getMessage() == "warmed up" for r in caplog.records)
        assert store.feedback_count() == 0
        with app.test_client() as client:  # and the app still answers
            assert client.get("/cds-services").status_code == 200
    finally:
        gc.unfreeze()
        store.dispose()
