"""The answer to an exception the app's own code raised that nothing inside the app answered
(a user's route failing with a ``RuntimeError``).

Starlette's ``ServerErrorMiddleware``, outside every middleware of the app's, answered it: a
plain "Internal Server Error" (or the app's own handler for 500 / ``Exception``) without the
request's ``X-Request-ID``, and without the CORS headers of the app's CORS middleware. Now
``LoadonceMiddleware`` answers it as it answers everything else: the app's own handler for
500 or ``Exception`` if it has one (called once, here), else a 500 in the body of the path's
protocol that names the exception's type and the request id, never its message or a
traceback. The app's ``debug`` mode keeps Starlette's debug page, which the developer asked
for.

Without a handler of the app's, the exception is raised on after the answer, as Starlette
does: the server logs it (uvicorn's "Exception in ASGI application") and a ``TestClient``
raises it in the test. The request id is added to it as a note, so that traceback says which
request failed. With the app's own handler it is logged here, under the request id, and not
raised on: Starlette's middleware would call that handler a second time.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from loadonce.core.errors import describe_exception
from loadonce.core.log_safe import log_safe_cut
from loadonce.http.errors import raw_error_response

logger = logging.getLogger("loadonce")

_NOTE = "loadonce request id: "


async def answer_unhandled(
    exc: Exception, scope: Scope, receive: Receive, send: Send, request_id: str
) -> bool:
    """Answer ``exc`` through ``send`` (which adds the request id and the app's CORS
    headers); says whether it is to be raised on (to the server, or a test's client)."""
    _note_request_id(exc, request_id)
    app = scope.get("app")
    if getattr(app, "debug", False):
        return True  # Starlette's debug page answers it
    handler = _server_error_handler(app)
    if handler is None:
        what = f"the server failed ({type(exc).__name__})"
        message = f"{what}; the server log has the details under request id {request_id}"
        await raw_error_response(500, message, scope)(scope, receive, send)
        return True
    try:
        response = await _handled(handler, Request(scope, receive), exc)
    except Exception:
        # The app's handler failed too: the client still gets an answer, the server the
        # handler's exception (its context says what it was handling).
        message = f"the server failed; the server log has the details under request id {request_id}"
        await raw_error_response(500, message, scope)(scope, receive, send)
        raise
    await response(scope, receive, send)
    logger.error(
        "request %s %s: the app raised %s (answered by the app's own handler)",
        request_id,
        log_safe_cut(scope.get("path", "")),
        describe_exception(exc),
        exc_info=exc,
    )
    return False


def _server_error_handler(app: Any) -> Any:
    """The app's handler for 500 or ``Exception``, as Starlette picks it (the last one)."""
    found = None
    for key, handler in (getattr(app, "exception_handlers", None) or {}).items():
        if key in (500, Exception):
            found = handler
    return found


async def _handled(handler: Any, request: Request, exc: Exception) -> Response:
    """The handler's answer, run as Starlette runs it: a plain function in a thread."""
    call = getattr(handler, "__call__", None)  # noqa: B004 (an object's async __call__ too)
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call):
        response: Response = await handler(request, exc)
    else:
        response = await run_in_threadpool(handler, request, exc)
    return response


def _note_request_id(exc: Exception, request_id: str) -> None:
    """The request id in the exception's traceback (a note): the log's traceback, or a test's
    failure, says which request it was. An exception object raised again (a module-level
    one) keeps only the latest request's."""
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        notes[:] = [note for note in notes if not str(note).startswith(_NOTE)]
    exc.add_note(_NOTE + request_id)
