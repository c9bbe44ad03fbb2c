"""The one judge of every outbound URL: fhirServer, FHIR next links, Medication reads, JWKS (jku) URLs.

WHY one function: two parsers that disagree are an attack. ``urllib.parse`` reads
``http://127.0.0.1:2\\@127.0.0.1:1/fhir`` as host 127.0.0.1 port 1, while ``requests``/urllib3 end the
authority at the backslash and connect to port 2 — with our bearer token. So the judge never looks at the
string it was given: it prepares the URL exactly as ``requests`` will (``PreparedRequest.prepare_url``, which
parses with urllib3's ``parse_url``), then reads the origin of that prepared URL the way ``requests``' adapter
does when it picks the connection (``urlparse``), and requires urllib3's reading of it to agree. Characters
on which parsers are known to disagree (backslash, whitespace, control, non-ASCII) are refused outright.
The caller fetches the URL the judge returns, so what was judged is what is sent.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from requests.exceptions import RequestException
from requests.models import PreparedRequest
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 8192


class RefusedUrl(ValueError):
    """The URL may not be fetched; ``reason`` is short, safe to log and to show (it never holds the URL)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a connection goes: what must match before a token may be sent."""

    scheme: str
    host: str
    port: int


def _unsafe_character(url: str) -> str | None:
    for ch in url:
        if ch == "\\":
            return "backslash"
        if ord(ch) > 127:
            return "non-ASCII character"
        if ch.isspace():
            return "whitespace"
        if unicodedata.category(ch).startswith("C"):
            return "control character"
    return None


def _prepared(url: str) -> str:
    """The URL string ``requests`` will send, or RefusedUrl."""
    prepared = PreparedRequest()
    try:
        prepared.prepare_url(url, None)
    except (RequestException, LocationParseError, ValueError, UnicodeError):
        raise RefusedUrl("not a valid URL") from None
    if not prepared.url:
        raise RefusedUrl("not a valid URL")
    return prepared.url


def _origin_and_path(prepared: str) -> tuple[Origin, str]:
    """Origin as requests' adapter picks the connection (urlparse), checked against urllib3's reading."""
    try:
        split = urlsplit(prepared)
        port = split.port
        u3 = parse_url(prepared)
    except (ValueError, LocationParseError):
        raise RefusedUrl("not a valid URL") from None
    scheme = split.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise RefusedUrl("only http and https URLs")
    host = (split.hostname or "").lower()
    if not host:
        raise RefusedUrl("no host")
    if split.username is not None or split.password is not None or u3.auth is not None or "@" in split.netloc:
        raise RefusedUrl("user information in URL")
    origin = Origin(scheme, host, port or _DEFAULT_PORTS[scheme])
    u3_host = (u3.host or "").lower().strip("[]")
    u3_origin = Origin((u3.scheme or "").lower(), u3_host, u3.port or _DEFAULT_PORTS.get(u3.scheme or "", 0))
    if u3_origin != Origin(origin.scheme, origin.host.strip("[]"), origin.port):
        raise RefusedUrl("ambiguous URL")
    path = split.path or "/"
    segments = [unquote(s) for s in path.split("/")]
    if any(s in (".", "..") or "/" in s or "\\" in s for s in segments):
        raise RefusedUrl("dot segment or encoded slash in path")
    return origin, path


def origin_of(url: str) -> Origin:
    """The origin a request to *url* would connect to (after the same checks as ``outbound_url``)."""
    return _judge(url)[1]


def _judge(url: object) -> tuple[str, Origin, str]:
    if not isinstance(url, str) or not url:
        raise RefusedUrl("not a URL")
    if len(url) > MAX_URL_LENGTH:
        raise RefusedUrl("URL too long")
    bad = _unsafe_character(url)
    if bad:
        raise RefusedUrl(f"{bad} in URL")
    prepared = _prepared(url)
    if _unsafe_character(prepared):  # cannot happen after the check above; cheap insurance
        raise RefusedUrl("not a valid URL")
    origin, path = _origin_and_path(prepared)
    return prepared, origin, path


def outbound_url(url: object, base: str | None = None) -> str:
    """The URL to fetch for *url*, judged as the HTTP client will read it; raises RefusedUrl.

    With *base* (the allowlisted FHIR base, or the allowlisted jku), the URL must have the same scheme,
    host and port, and its path must be the base path or lie under it.
    """
    prepared, origin, path = _judge(url)
    if base is not None:
        _, base_origin, base_path = _judge(base)
        if origin != base_origin:
            raise RefusedUrl("another server")
        root = base_path.rstrip("/")
        if path.rstrip("/") != root and not path.startswith(root + "/"):
            raise RefusedUrl("outside the base path")
    return prepared


def url_problem(url: object, base: str | None = None) -> str | None:
    """Why *url* may not be fetched (see ``outbound_url``), or None if it may."""
    try:
        outbound_url(url, base)
    except RefusedUrl as refused:
        return refused.reason
    return None
