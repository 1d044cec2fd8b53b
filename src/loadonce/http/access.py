"""API keys per route family, checked before a request reaches any route (the keys and the
families: ``access_keys.py``)."""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Scope

from loadonce.http.access_keys import AccessKeys, presented_key, refusal
from loadonce.http.errors import raw_error_response
from loadonce.http.route_families import family_in


def access_refusal(scope: Scope, keys: AccessKeys) -> Response | None:
    """The 401 (no key, or an unknown one) or 403 (a key of the wrong scope) answer, as JSON,
    or None when the request may go on."""
    refused = refusal(keys, family_in(scope), presented_key(scope["headers"]))
    if refused is None:
        return None
    status, message = refused
    headers = {"WWW-Authenticate": 'Bearer realm="loadonce"'} if status == 401 else {}
    return raw_error_response(status, message, scope, headers)
