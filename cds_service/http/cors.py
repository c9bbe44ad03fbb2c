"""CORS for browser-based CDS clients (checklist J8): preflight on discovery, service and feedback URLs.

Flask answers OPTIONS itself for every route; this adds the CORS headers to that answer and to every
other response. Origins come from settings: ``*`` for open sandboxes, an allowlist in production.
"""

from __future__ import annotations

from collections.abc import Sequence

from flask import Flask, Response, request

ALLOW_HEADERS = "Authorization, Content-Type"
ALLOW_METHODS = "GET, POST, OPTIONS"
MAX_AGE_S = "600"


def install_cors(app: Flask, origins: Sequence[str]) -> None:
    """Add CORS headers after every request for allowed origins."""
    allow_any = "*" in origins
    allowed = frozenset(o.rstrip("/") for o in origins)

    @app.after_request
    def _cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if not origin:
            return response
        if allow_any:
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin.rstrip("/") in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.vary.add("Origin")
        else:
            response.vary.add("Origin")
            return response
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = MAX_AGE_S
        return response
