"""Read a JSON request body defensively: media type (415), size (413), syntax (400), before any parsing."""

from __future__ import annotations

from typing import Any

import orjson
from flask import request
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from cds_service.cdshooks import RequestError


def is_json_media_type(mimetype: str) -> bool:
    """application/json or any ``+json`` type (e.g. application/fhir+json)."""
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def read_json(max_bytes: int) -> Any:
    """The decoded body, or an HTTP error: 415 wrong type, 413 too large, 400 malformed JSON."""
    if not is_json_media_type(request.mimetype):
        raise UnsupportedMediaType("Content-Type must be application/json")
    if request.content_length is not None and request.content_length > max_bytes:
        raise RequestEntityTooLarge()
    raw = request.get_data(cache=True)  # bodies without a length: cut at MAX_CONTENT_LENGTH = limit + 1
    if len(raw) > max_bytes:
        raise RequestEntityTooLarge()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestError("$", "malformed JSON") from None
