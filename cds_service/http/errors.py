"""Error bodies for every failure, so an EHR never gets an HTML page or a stack trace (no 500 with details).

Every non-2xx body is a FHIR OperationOutcome (CDS Hooks 3.0 ballot): the field at fault in
``issue[].expression``, the message in ``issue[].diagnostics``, the HTTP status unchanged. Bodies name the
field and the problem, never submitted values (they can hold PHI or the access token).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable

import orjson
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from cds_service.cdshooks import RequestError
from cds_service.cdshooks.outcome import operation_outcome

log = logging.getLogger("cds_service.http")


def error_response(status: int, message: str, *, field: str | None = None, expression: Iterable[str] = (),
                   details: str | None = None) -> Response:
    """An OperationOutcome with *status*; *field* (or several *expression* paths) names what is wrong."""
    paths = [field, *expression] if field is not None else list(expression)
    body = operation_outcome(status, message, expression=paths, details=details)
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def request_error_response(exc: RequestError) -> Response:
    """A :class:`RequestError` as an OperationOutcome (its text already excludes values)."""
    return error_response(exc.status, exc.message, field=exc.field)


def register_error_handlers(app: Flask) -> None:
    """OperationOutcome bodies for HTTP errors (404, 405, 413, …) and a bare 500 for anything unexpected."""

    @app.errorhandler(RequestError)
    def _request_error(exc: RequestError) -> Response:
        return request_error_response(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        response = error_response(status, exc.name, details=exc.description)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Type and code locations only: exception messages may quote request data (PHI, tokens).
        frames = [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)]
        log.error("unhandled %s", type(exc).__name__, extra={"fields": {"frames": frames[-8:]}})
        return error_response(500, "internal error")
