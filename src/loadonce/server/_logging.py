"""Logging for server mode: uvicorn's own configuration plus loadonce's logger."""

from __future__ import annotations

import copy
from typing import Any

from uvicorn.config import LOGGING_CONFIG


def log_config(level: str) -> dict[str, Any]:
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["loadonce"] = {
        "()": "uvicorn.logging.DefaultFormatter",
        "fmt": "%(levelprefix)s [loadonce] %(message)s",
        "use_colors": None,
    }
    config["handlers"]["loadonce"] = {
        "formatter": "loadonce",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    python_level = "DEBUG" if level == "trace" else level.upper()
    config["loggers"]["loadonce"] = {
        "handlers": ["loadonce"],
        "level": python_level,
        "propagate": False,
    }
    return config
