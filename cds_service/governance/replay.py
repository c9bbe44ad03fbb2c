"""Replay the synthetic cohort over several weeks with a shadow rule set and scripted feedback.

This is how the governance loop is shown end to end (and how the report and its HTML charts are tested):
the real app on a loopback port, its clock moved week by week, the EHR side played by ``demo``, and a
clinician side that answers cards by a fixed script — some accepted, some overridden with a reason,
some left unanswered — so snoozes, acceptance and override reasons all have data.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from cds_service import loopback
from cds_service.cdshooks.hooks import HOOKS
from cds_service.demo import DemoPatient, hook_request


@dataclass
class Clock:
    """The service's clock, moved by the replay."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


def candidate_rules(live: Path, folder: Path) -> Path:
    """A shadow candidate for demos and benches: the live rules with KB-04's info threshold halved and its
    version bumped (so the candidate set has its own rule-set version and fires more often)."""
    shutil.copytree(live, folder, ignore=shutil.ignore_patterns("tests"))
    kb04 = folder / "KB-04-intensive-exposure.yaml"
    text = kb04.read_text(encoding="utf-8")
    text = text.replace("cum_info: {type: quantity, default: 1000,", "cum_info: {type: quantity, default: 500,", 1)
    kb04.write_text(re.sub(r"^version: .*$", "version: 9.0.0-candidate", text, count=1, flags=re.M), encoding="utf-8")
    return folder


@contextmanager
def serving(rules_dir: Path, database_url: str, clock: Clock, *, shadow_rules: Path | None = None,
            site: Path | None = None) -> Iterator[tuple[str, Any]]:
    """The real app with the decision log on *database_url*; yields (base URL, governance)."""
    from cds_service.app import create_app
    from cds_service.config import Settings
    from cds_service.http.state import EXTENSION
    from cds_service.rules_state import RulesState
    from cds_service.store import Store

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    settings = Settings(database_url=database_url, rules_dir=str(rules_dir), reload_interval_s=0,
                        shadow_rules_dir=str(shadow_rules) if shadow_rules else None,
                        site_file=str(site) if site else None, log_hash_key="replay")
    store = Store(database_url)
    app = create_app(settings, rules_state=RulesState([rules_dir], site=site, reload_interval_s=0), store=store,
                     clock=clock)
    governance = app.extensions[EXTENSION].governance
    try:
        with loopback.serve(app) as base_url:
            yield base_url, governance
    finally:
        governance.close()
        store.dispose()


def scripted_answer(card: dict[str, Any], n: int, at: datetime) -> dict[str, Any] | None:
    """The n-th card's answer: accepted (1 in 3, when it has suggestions), overridden with a rotating reason
    (1 in 3), otherwise none."""
    stamp = at.isoformat().replace("+00:00", "Z")
    if n % 3 == 0 and card.get("suggestions"):
        return {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": stamp,
                "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}]}
    reasons = card.get("overrideReasons") or []
    if n % 3 == 1 and reasons:
        reason = reasons[(n // 3) % len(reasons)]
        return {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": stamp,
                "overrideReason": {"reason": {"code": reason["code"], "system": reason["system"]}}}
    return None


def replay_weeks(patients: Sequence[DemoPatient], base_url: str, clock: Clock, *, weeks: int = 4,
                 on_progress: Callable[[int], None] = lambda _: None) -> Counter[str]:
    """Every hook for every patient once a week for *weeks* weeks, answering cards by the script."""
    session = requests.Session()
    discovery = session.get(f"{base_url}/cds-services", timeout=30).json()
    templates = {service["hook"]: service.get("prefetch", {}) for service in discovery["services"]}
    start = clock.now
    counts: Counter[str] = Counter()
    n = 0
    for week in range(weeks):
        clock.now = start + timedelta(weeks=week)
        for patient in patients:
            for hook in HOOKS:
                if hook not in templates:
                    continue
                body = hook_request(hook, patient, templates[hook])
                if body is None:
                    continue
                service_id = HOOKS[hook].service.id
                response = session.post(f"{base_url}/cds-services/{service_id}", json=body, timeout=60)
                response.raise_for_status()
                counts["calls"] += 1
                for card in response.json()["cards"]:
                    counts["cards"] += 1
                    answer = scripted_answer(card, n, clock.now + timedelta(minutes=5))
                    n += 1
                    if answer is None:
                        continue
                    sent = _send_feedback(session, f"{base_url}/cds-services/{service_id}/feedback", answer)
                    sent.raise_for_status()
                    counts[answer["outcome"]] += 1
            on_progress(1)
    clock.now = start
    return counts


def _send_feedback(session: requests.Session, url: str, answer: dict[str, Any]) -> requests.Response:
    """Post one feedback item, as an EHR does when the clinician answers the card."""
    return session.post(url, json={"feedback": [answer]}, timeout=60)
