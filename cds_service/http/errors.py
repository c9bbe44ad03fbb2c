"""JSON errors for every failure, so an EHR never gets an HTML page or a stack trace (no 500 with details).

Bodies name the field and the problem, never submitted values (they can hold PHI or the access token).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from cds_service.cdshooks import RequestError

log = logging.getLogger("cds_service.http")


def error_response(status: int, message: str, *, field: str | None = None, **extra: Any) -> Response:
    """``{"error": {"status", "message", "field"?}}`` with *status*."""
    error: dict[str, Any] = {"status": status, "message": message}
    if field is not None:
        error["field"] = field
    error.update(extra)
    response = jsonify({"error": error})
    response.status_code = status
    return response


def request_error_response(exc: RequestError) -> Response:
    """A :class:`RequestError` as JSON (its text already excludes values)."""
    return error_response(exc.status, exc.message, field=exc.field)


def register_error_handlers(app: Flask) -> None:
    """JSON bodies for HTTP errors (404, 405, 413, …) and a bare 500 for anything unexpected."""

    @app.errorhandler(RequestError)
    def _request_error(exc: RequestError) -> Response:
        return request_error_response(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        response = error_response(status, exc.name, detail=exc.description)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Type and code locations only: exception messages may quote request data (PHI, tokens).
        frames = [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)]
        log.error("unhandled %s", type(exc).__name__, extra={"fields": {"frames": frames[-8:]}})
        return error_response(500, "internal error")
