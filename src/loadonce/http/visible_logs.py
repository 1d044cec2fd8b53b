"""loadonce's own log lines in a user's app under plain uvicorn or gunicorn.

Those servers configure their own loggers only; a library's lines at INFO then go nowhere, and
the line that shows each model loaded once per worker ("model 'iris' version 1 loaded in
worker pid 4406 ...; each worker process loads its own copy") would never be seen. When
nothing is configured for them (no handler on loadonce's logger, none on the root logger),
the lifespan gives them one, in uvicorn's format. An app that configures logging keeps its own
choice; ``loadonce serve`` configures them itself.
"""

from __future__ import annotations

import logging

_FORMAT = "%(levelname)s:     [loadonce] %(message)s"


class _NotTheAccessLog(logging.Filter):
    """The server's own access log already has a line per request."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("loadonce.access")


def make_visible() -> None:
    logger = logging.getLogger("loadonce")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(_NotTheAccessLog())
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
