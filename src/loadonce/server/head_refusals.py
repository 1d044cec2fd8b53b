"""What a request head that is not HTTP/1.1 as RFC 9112 and 9110 read it is answered, with the
reason said (``http_protocol.py`` writes the answer and closes).

Every head the parser refused was "the request is not valid HTTP/1.1", whatever it was: a
duplicate Content-Length, a folded line, a method it does not know. The parser's own reason
is said now, and the cases the RFCs give a status of their own get it: an unknown method 501
(RFC 9110 9.1), a version other than 1.x 505. Heads the parser accepts but the RFCs refuse
(``unusual_form``) are answered too: a target that is not a path (``*`` but for OPTIONS, an
authority), CONNECT, Transfer-Encoding in an HTTP/1.0 request. Only the rare path runs here.
"""

from __future__ import annotations

import re
from http import HTTPStatus

import httptools

Refusal = tuple[HTTPStatus, str]

NOT_HTTP = "the request is not valid HTTP/1.1"
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD = HTTPStatus.BAD_REQUEST
# The parser's reasons said in the terms of a request a client wrote.
_REASONS: dict[str, Refusal] = {
    "Invalid HTTP version": (
        HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
        "this HTTP version is not supported: send HTTP/1.1 (or HTTP/1.0)",
    ),
    "Pause on PRI/Upgrade": (
        HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
        "HTTP/2 is not supported on this port: send HTTP/1.1",
    ),
    "Expected HTTP/, RTSP/ or ICE/": (
        _BAD,
        f"{NOT_HTTP}: the request line is not METHOD TARGET HTTP/1.1",
    ),
    "Invalid header value char": (
        _BAD,
        f"{NOT_HTTP}: a header value holds a character not allowed there (a control character)",
    ),
}
_TLS_RECORD = b"\x16\x03"  # a TLS handshake's first bytes: an https:// client


def parser_refusal(error: httptools.HttpParserError, request_line: bytes | None) -> Refusal:
    """The answer to a head the parser refused with ``error``. ``request_line``: the start of
    the request's line when the read that failed began with it, else None (the method it
    names is quoted when it is the one refused)."""
    if isinstance(error, httptools.HttpParserInvalidMethodError):
        return _method_refusal(request_line)
    if isinstance(error, httptools.HttpParserCallbackError):
        # A callback raised: uvicorn's reading of the target (a path it cannot parse).
        cause = error.__context__
        if isinstance(cause, httptools.HttpParserInvalidURLError):
            return _BAD, f"{NOT_HTTP}: the request target is not a valid path ({_said(cause)})"
        return _BAD, NOT_HTTP
    reason = str(error)
    known = _REASONS.get(reason)
    if known is not None:
        return known
    if isinstance(error, httptools.HttpParserInvalidURLError):
        return _BAD, f"{NOT_HTTP}: the request target is not a valid path ({_said(error)})"
    return _BAD, f"{NOT_HTTP}: {_said(error)}" if reason else NOT_HTTP


def _method_refusal(request_line: bytes | None) -> Refusal:
    if request_line is not None and request_line.startswith(_TLS_RECORD):
        return _BAD, "this port speaks plain HTTP, not TLS: use http://, not https://"
    if request_line is not None:
        method = request_line.lstrip(b"\r\n").split(b" ", 1)[0][:32]
        if _TOKEN.fullmatch(method):
            shown = method.decode("ascii")
            return (
                HTTPStatus.NOT_IMPLEMENTED,
                f"method {shown} is not implemented (methods are case-sensitive)",
            )
    return _BAD, f"{NOT_HTTP}: the request's method is not one this server knows"


def _said(error: Exception) -> str:
    """The parser's reason as part of a sentence: "Duplicate Content-Length" -> "duplicate
    Content-Length" (a header's name keeps its capitals)."""
    reason = str(error)[:120]
    first = reason.split(" ", 1)[0]
    if "-" not in first and "`" not in first and first[1:2].islower():
        return reason[0].lower() + reason[1:]
    return reason


def version_refusal(version: str) -> Refusal:
    """An HTTP version the parser read but this server does not speak (0.9, 2.0 in a request
    line)."""
    return (
        HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
        f"HTTP/{version} is not supported: send HTTP/1.1 (or HTTP/1.0)",
    )


CONNECT_REFUSAL: Refusal = (
    HTTPStatus.NOT_IMPLEMENTED,
    "method CONNECT is not implemented: this server is not a proxy",
)
TRANSFER_CODING_IN_HTTP_1_0: Refusal = (
    _BAD,
    f"{NOT_HTTP}: Transfer-Encoding in an HTTP/1.0 request (its framing cannot be trusted)",
)
ASTERISK_NOT_OPTIONS: Refusal = (_BAD, f"{NOT_HTTP}: the request target * is for OPTIONS only")
AUTHORITY_FORM: Refusal = (_BAD, f"{NOT_HTTP}: the request target is not a path")
UPGRADE_WITH_CHUNKED_BODY: Refusal = (
    _BAD,
    "this server does not switch protocols (Upgrade), and reads the body of a request that "
    "asks to only when it has a Content-Length: send it without Upgrade",
)


def absolute_form_authority(target: bytes) -> bytes | Refusal:
    """The host[:port] of an absolute-form target (``http://host:8000/path``), which stands
    for the request's Host (RFC 9112 3.2.2), or the refusal of a target that is no URL."""
    scheme, separator, rest = target.partition(b"://")
    if not separator or scheme.lower() not in (b"http", b"https"):
        return AUTHORITY_FORM
    authority = re.split(rb"[/?#]", rest, maxsplit=1)[0]
    if b"@" in authority:
        return _BAD, f"{NOT_HTTP}: the request target carries user information"
    return authority
