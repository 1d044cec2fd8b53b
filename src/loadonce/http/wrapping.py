"""The middleware objects wrapping an ASGI app: each holds the next as ``.app``, as Starlette
composes them (an app's middleware stack, ``Mount(..., middleware=[...])``,
``CORSMiddleware(sub_app)``), down to an app or router (what has ``.routes``)."""

from __future__ import annotations

from collections.abc import Iterator

# How many layers are looked through: far more than an app stacks, and a bound for an object
# whose ``.app`` leads back to itself.
_DEEPEST = 64


def layers(app: object) -> Iterator[object]:
    """``app``, then each layer inside it, the last being the app or router they wrap (or
    the innermost object that wraps nothing)."""
    for _ in range(_DEEPEST):
        yield app
        if hasattr(app, "routes"):
            return
        inner = getattr(app, "app", None)
        if inner is None or inner is app:
            return
        app = inner


def unwrapped(app: object) -> object:
    """The app or router inside the middleware objects wrapping ``app``."""
    *_, inner = layers(app)
    return inner
