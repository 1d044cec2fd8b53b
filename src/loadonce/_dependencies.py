"""FastAPI dependencies that hand a handler the registry or one model, from ``app.state``."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from loadonce._errors import LoadonceError
from loadonce._model import Model
from loadonce._registry import STATE_KEY, Registry


async def get_registry(connection: HTTPConnection) -> Registry:
    """The registry the loadonce lifespan put on ``app.state``.

    ``async`` on purpose, like ``ModelDependency.__call__``: FastAPI runs a plain ``def``
    dependency in its threadpool, a thread hop on every request for a dictionary lookup.
    """
    return registry_of(connection)


def registry_of(connection: HTTPConnection) -> Registry:
    registry = getattr(connection.app.state, STATE_KEY, None)
    if not isinstance(registry, Registry):
        raise LoadonceError(
            "no loadonce registry on app.state: pass lifespan=loadonce.lifespan(...) to FastAPI, "
            "and in tests use TestClient as a context manager so the lifespan runs"
        )
    return registry


class ModelDependency:
    """A dependency that returns the loaded model called ``name``.

    Use it as ``model: Annotated[loadonce.Model, Depends(ModelDependency("iris"))]``. Two
    instances with the same name are equal, so a test can replace it with
    ``app.dependency_overrides[ModelDependency("iris")] = lambda: fake``.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, connection: HTTPConnection) -> Model:
        return registry_of(connection).get(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelDependency) and other.name == self.name

    def __hash__(self) -> int:
        return hash((ModelDependency, self.name))

    def __repr__(self) -> str:
        return f"ModelDependency({self.name!r})"
