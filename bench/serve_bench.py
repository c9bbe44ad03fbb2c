"""Run the production server (``kbladder serve`` with gunicorn, same options) with one extra bench route.

``python -m bench.serve_bench`` reads the usual ``KBLADDER_*`` settings. The app each worker loads is the real
one, its clock fixed at the cohort's now, wrapped in a tiny WSGI app that answers ``POST /bench/bare`` with a
fixed ``{"cards": []}`` after reading the body: the bare baseline, served by the same gunicorn config and
process. No production route is added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BARE_PATH = "/bench/bare"
BARE_BODY = b'{"cards":[]}'


def bare_wrapper(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == BARE_PATH:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            environ["wsgi.input"].read(length)
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(BARE_BODY)))])
            return [BARE_BODY]
        return app(environ, start_response)

    return wsgi


def main() -> None:
    from cds_service import serve
    from cds_service.config import Settings

    from .patients import NOW

    real_create_app, real_warm_up = serve.create_app, serve.warm_up

    def create_app(settings: Settings, **kwargs: Any) -> Any:
        return real_create_app(settings, clock=lambda: NOW, **kwargs)

    def warm_up(app: Any) -> Any:
        return bare_wrapper(real_warm_up(app))  # the real warm-up, then the bench route around the app

    serve.create_app, serve.warm_up = create_app, warm_up  # what each gunicorn worker calls in load()
    serve.serve(Settings.load())


if __name__ == "__main__":
    main()
