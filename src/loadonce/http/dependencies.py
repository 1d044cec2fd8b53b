"""FastAPI dependencies that hand a handler the registry or one model, from ``app.state``."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from loadonce.core.model import Model
from loadonce.core.registry import Registry
from loadonce.http.state import LoadonceState


async def get_registry(connection: HTTPConnection) -> Registry:
    """The registry of the state the loadonce lifespan put on ``app.state``.

    ``async`` on purpose, like ``ModelDependency.__call__``: FastAPI runs a plain ``def``
    dependency in its threadpool, a thread hop on every request for a dictionary lookup.
    """
    return registry_of(connection)


def registry_of(connection: HTTPConnection) -> Registry:
    return LoadonceState.of(connection).registry


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
