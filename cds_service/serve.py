"""Run the service: werkzeug's threaded server for one worker, gunicorn for several.

Both shut down gracefully on SIGTERM (in-flight requests finish). Rule reloads: the rule files are
polled in every process; with one worker SIGHUP reloads at once, with gunicorn SIGHUP makes the
master restart its workers, which load the current files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from werkzeug.serving import WSGIRequestHandler, make_server

from cds_service.app import create_app
from cds_service.config import Settings
from cds_service.http.state import EXTENSION
from cds_service.logjson import configure_logging
from cds_service.metrics import MULTIPROC_ENV, enable_multiprocess, remove_multiprocess_dir, worker_exited
from cds_service.rules_state import RulesState
from cds_service.store import Store
from cds_service.warmup import warm_up

log = logging.getLogger("cds_service.serve")

REQUEST_SOCKET_TIMEOUT_S = 30

_JSON_HANDLER = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
#: gunicorn's own messages (master and workers) as JSON lines too.
GUNICORN_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "cds_service.logjson.JsonFormatter"}},
    "handlers": {"json_stderr": _JSON_HANDLER},
    "root": {"level": "INFO", "handlers": ["json_stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["json_stderr"], "propagate": False},
        # Off: cds_service.access already logs each request (without the request line's query string).
        "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
    },
}


def prepare(settings: Settings) -> None:
    """Create the folder of a SQLite database file (``var/`` by default)."""
    url = settings.database_url
    if url.startswith("sqlite:///") and ":memory:" not in url:
        path = url.removeprefix("sqlite:///").split("?", 1)[0]
        if path:
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)


AUTH_OFF_BANNER = (
    "\n" + "!" * 78 + "\n"
    "!!  AUTHENTICATION IS OFF: any caller can invoke the CDS services (no JWT check).  !!\n"
    "!!  Development only. Enable auth in a config file before connecting an EHR.      !!\n"
    + "!" * 78 + "\n"
)


def serve(settings: Settings) -> None:
    """Start serving with *settings*; returns after a graceful shutdown.

    Refuses (exit 2) to serve with auth off on a non-loopback address unless
    ``insecure_no_auth_on_public_interface`` is set; with auth off, warns loudly either way.
    """
    configure_logging()
    problem = settings.exposure_problem()
    if problem is not None:
        log.error(problem)
        raise SystemExit(2)
    if not settings.auth.enabled:
        if sys.stderr.isatty():  # a person at a terminal (make run); pipelines get JSON lines only
            sys.stderr.write(AUTH_OFF_BANNER)
        fields = {"host": settings.host, "insecureFlag": settings.insecure_no_auth_on_public_interface}
        log.warning("AUTHENTICATION IS OFF: development only, any caller can invoke the CDS services",
                    extra={"fields": fields})
    else:
        log.info("authentication on", extra={"fields": {
            "issuers": [i.iss for i in settings.auth.issuers], "publicUrl": settings.public_url}})
    prepare(settings)
    if settings.workers > 1:
        _serve_gunicorn(settings)
    else:
        _serve_werkzeug(settings)


class _RequestHandler(WSGIRequestHandler):
    """A socket timeout, so a client that stops sending cannot hold a thread (or the shutdown) forever."""

    timeout = REQUEST_SOCKET_TIMEOUT_S


def _serve_werkzeug(settings: Settings) -> None:
    rules = RulesState([settings.rules_dir], site=settings.site_file, reload_interval_s=settings.reload_interval_s,
                       require_proof=settings.reload_requires_tests)
    if rules.ruleset is None:
        log.error("no valid rule set at start; serving 503 on hooks until the files are fixed")
    try:
        store = Store(settings.database_url)
    except (SQLAlchemyError, ValueError) as exc:  # the message could carry connection details
        log.error("database unavailable", extra={"fields": {"error": type(exc).__name__}})
        raise SystemExit(2) from None
    try:
        app = warm_up(create_app(settings, rules_state=rules, store=store))
        server = make_server(settings.host, settings.port, app, threaded=True, request_handler=_RequestHandler)
    except OSError as exc:
        log.error("cannot listen", extra={"fields": {"host": settings.host, "port": settings.port,
                                                     "error": exc.strerror or type(exc).__name__}})
        raise SystemExit(2) from None
    # werkzeug marks request threads as daemons, which server_close() does not wait for: a SIGTERM would
    # cut off answers in flight. Non-daemon threads are joined, so every started request is answered.
    server.daemon_threads = False
    rules.start_polling()
    rules.install_sighup()

    def stop(signum: int, _frame: object) -> None:
        log.info("shutting down", extra={"fields": {"signal": signal.Signals(signum).name}})
        # shutdown() waits for serve_forever to return: call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving", extra={"fields": {"host": settings.host, "port": server.server_port, "workers": 1,
                                          "rulesVersion": rules.ruleset.version if rules.ruleset else None}})
    try:
        server.serve_forever()
    finally:
        server.server_close()
        rules.stop_polling()
        governance = app.extensions[EXTENSION].governance
        if governance is not None and not governance.close():  # every accepted log record written
            log.error("decision log not fully written at shutdown", extra={"fields": governance.counters()})
        store.dispose()
        log.info("stopped")


def _serve_gunicorn(settings: Settings) -> None:
    from gunicorn.app.base import BaseApplication

    if not settings.log_hash_key:  # one key for all workers, so their hashes (and snoozes) agree
        settings = dataclasses.replace(settings, log_hash_key=secrets.token_hex(32))

    class KbladderApplication(BaseApplication):  # type: ignore[misc]
        """gunicorn without a config file: options from Settings, one app per worker (after fork)."""

        def __init__(self, settings: Settings) -> None:
            self.settings = settings
            super().__init__()

        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": f"{self.settings.host}:{self.settings.port}",
                "workers": self.settings.workers,
                "worker_class": "gthread",
                "threads": 4,
                "graceful_timeout": 30,
                "accesslog": None,  # our own JSON access log; gunicorn's would not be JSON
                "logconfig_dict": GUNICORN_LOGGING,
                "limit_request_field_size": 8190,
                "control_socket_disable": True,  # gunicorn 24+ would otherwise write ~/.gunicorn/gunicorn.ctl
                "child_exit": _worker_exited,
            }
            for key, value in options.items():
                if key in self.cfg.settings:  # tolerate gunicorn versions without a setting
                    self.cfg.set(key, value)

        def load(self) -> Any:
            configure_logging()
            return warm_up(create_app(self.settings))  # per worker, after fork

    # Each worker writes its metrics to files here; /metrics in any worker adds up all of them.
    operator_dir = os.environ.get(MULTIPROC_ENV)
    metrics_dir = enable_multiprocess()
    master = os.getpid()
    try:
        KbladderApplication(settings).run()
    finally:
        # Workers are forks that leave run() through this block too: only the master removes the folder.
        if not operator_dir and os.getpid() == master:
            remove_multiprocess_dir(metrics_dir)


def _worker_exited(_server: object, worker: Any) -> None:
    worker_exited(worker.pid)
