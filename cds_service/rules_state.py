"""The live rule set: loaded at start, reloaded on file change or SIGHUP, never replaced by a broken one.

Readers take ``state.current`` (one attribute read: atomic in CPython, so no lock on the request path);
only reloads serialise on a lock. A failed reload keeps the last good set and records why, so a typo in
a rule file shows up in /healthz instead of taking the service down.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cds_service.engine.loader import load_ruleset, rule_files, valueset_dirs
from cds_service.engine.model import RuleSet

log = logging.getLogger("cds_service.rules")

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class RulesSnapshot:
    """What a request sees: the rule set (None only if no load ever succeeded) and the last error."""

    ruleset: RuleSet | None
    loaded_at: datetime | None = None
    last_error: tuple[str, ...] = ()
    last_error_at: datetime | None = None
    warnings: tuple[str, ...] = field(default=())


class RulesState:
    """Holds the current :class:`RuleSet` for one process and keeps it fresh."""

    def __init__(self, paths: Sequence[Path | str], *, site: Path | str | None = None,
                 reload_interval_s: float = 2.0, require_proof: bool = False) -> None:
        self.paths = [Path(p) for p in paths]
        self.site = Path(site) if site else None
        self.reload_interval_s = reload_interval_s
        #: A hot reload goes live only when the lock file agrees and the set's own rule tests pass.
        self.require_proof = require_proof
        self._current = RulesSnapshot(None)
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._fingerprint: Fingerprint = ()
        self._listeners: list[Callable[[bool, RulesSnapshot], None]] = []
        self.reload()

    @property
    def current(self) -> RulesSnapshot:
        return self._current

    @property
    def ruleset(self) -> RuleSet | None:
        return self._current.ruleset

    def watched_files(self) -> list[Path]:
        """Rule files, value-set files and the site file: any change to them triggers a reload."""
        files = list(rule_files(self.paths))
        for folder in valueset_dirs(self.paths):
            if folder.is_dir():
                files.extend(sorted(p for p in folder.iterdir() if p.is_file()))
        if self.site is not None:
            files.append(self.site)
        return files

    def fingerprint(self) -> Fingerprint:
        """(path, mtime_ns, size) of every watched file; a vanished file counts as a change too."""
        out = []
        for path in self.watched_files():
            try:
                stat = path.stat()
                out.append((str(path), stat.st_mtime_ns, stat.st_size))
            except OSError:
                out.append((str(path), -1, -1))
        return tuple(out)

    def on_reload(self, listener: Callable[[bool, RulesSnapshot], None]) -> None:
        """Call *listener(ok, snapshot)* after every later reload attempt (metrics count them)."""
        self._listeners.append(listener)

    def reload(self) -> bool:
        """Load the rule files now; True when a new set is in place, False when the old one was kept."""
        ok = self._reload()
        for listener in list(self._listeners):
            try:
                listener(ok, self._current)
            except Exception:  # an observer must never break reloading
                log.exception("rule reload listener failed")
        return ok

    def _reload(self) -> bool:
        with self._reload_lock:
            self._fingerprint = self.fingerprint()
            now = datetime.now(UTC)
            try:
                result = load_ruleset(self.paths, site=self.site)
            except Exception as exc:  # a loader bug must not kill the poller or the service
                log.exception("rule load crashed")
                problems: list[str] = [f"rule loader crashed: {type(exc).__name__}"]
                ruleset = None
                warnings: list[str] = []
            else:
                problems = [str(p) for p in result.errors]
                warnings = [str(p) for p in result.problems if p.severity != "error"]
                ruleset = result.ruleset
                if ruleset is None and not problems:
                    problems = ["rule set could not be loaded"]
            old = self._current
            if ruleset is not None and old.ruleset is not None and self.require_proof:
                problems = self._unproven(ruleset)
                if problems:
                    ruleset = None
            if ruleset is not None:
                if old.ruleset is not None:
                    try:  # a log line must never keep a good set from going live
                        _log_prefetch_change(old.ruleset, ruleset)
                    except Exception:
                        log.exception("could not compare prefetch templates")
                self._current = RulesSnapshot(ruleset, now, warnings=tuple(warnings))
                log.info("rules loaded: %d rule(s), version %s", len(ruleset.rules), ruleset.version)
                return True
            self._current = RulesSnapshot(old.ruleset, old.loaded_at, tuple(problems), now, old.warnings)
            log.error("rule reload failed, keeping %s: %s",
                      old.ruleset.version if old.ruleset else "no rules", "; ".join(problems[:5]))
            return False

    def _unproven(self, ruleset: RuleSet) -> list[str]:
        """Why a loaded set may not go live: lock-file or project-code errors, failing rule tests."""
        from cds_service.decision.testing import run_tests
        from cds_service.governance.lock import governance_problems

        problems = [str(p) for p in governance_problems(ruleset, self.paths) if p.severity == "error"]
        tests = [p / "tests" for p in self.paths if (p / "tests").is_dir()]
        if tests and not problems:
            report = run_tests(tests)
            if not report.ok:
                failed = [str(p) for p in report.problems] + [
                    f"{c.file}:{c.line}: rule test failed: {c.name}" for c in report.cases if not c.passed]
                problems = failed or ["rule tests failed"]
        return problems

    def reload_if_changed(self) -> bool:
        """Reload when a watched file changed since the last load attempt; True when it tried."""
        if self.fingerprint() == self._fingerprint:
            return False
        self.reload()
        return True

    # -- background polling and SIGHUP ------------------------------------------------------------

    def start_polling(self) -> None:
        """Poll file mtimes every ``reload_interval_s`` in a daemon thread (0 disables)."""
        if self.reload_interval_s <= 0 or self._poller is not None:
            return
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, name="kbladder-rules-poller", daemon=True)
        self._poller.start()

    def stop_polling(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None

    def _poll(self) -> None:
        while not self._stop.wait(self.reload_interval_s):
            try:
                self.reload_if_changed()
            except Exception:  # keep polling whatever happens
                log.exception("rule poller error")

    def install_sighup(self) -> bool:
        """Reload on SIGHUP. Only possible from the main thread; reloads run in a thread of their own
        so the handler never waits on the reload lock the interrupted code may hold."""
        if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
            return False

        def handler(_signum: int, _frame: object) -> None:
            threading.Thread(target=self.reload, name="kbladder-rules-sighup", daemon=True).start()

        signal.signal(signal.SIGHUP, handler)
        return True


def _log_prefetch_change(old: RuleSet, new: RuleSet) -> None:
    """EHRs cache discovery: a change of the prefetch templates must be visible in the log."""
    from cds_service.decision.catalog import templates_for

    for hook in sorted({h for rule in (*old.rules, *new.rules) for h in rule.hooks}):
        before, after = templates_for(old, hook), templates_for(new, hook)
        if before != after:
            log.warning("discovery prefetch templates changed on reload: EHRs that cache discovery must refresh",
                        extra={"fields": {"hook": hook, "added": sorted(set(after) - set(before)),
                                          "removed": sorted(set(before) - set(after)),
                                          "changed": sorted(k for k in set(before) & set(after)
                                                            if before[k] != after[k])}})
