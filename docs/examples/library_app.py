"""A user's own FastAPI app with loadonce: own routes, own lifespan, models loaded once."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import loadonce


def train_iris() -> LogisticRegression:
    """Runs once per worker process, at startup, never in a request."""
    iris = load_iris()
    return LogisticRegression(max_iter=1000).fit(iris.data, iris.target_names[iris.target])


@asynccontextmanager
async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Your own startup and shutdown (database pools, clients...). The models are already
    # loaded when this starts, and are unloaded after it ends.
    app.state.requests_served = 0
    yield


models = [
    loadonce.ModelSpec(
        name="iris",
        loader=train_iris,
        concurrency="shared",  # a fitted scikit-learn estimator is safe to share
        warmup=[5.1, 3.5, 1.4, 0.2],  # one prediction before the model counts as ready
    )
]
app = FastAPI(lifespan=loadonce.lifespan(models, wrap=app_lifespan))
app.include_router(loadonce.health_router())  # GET /livez, GET /readyz
app.include_router(loadonce.models_router(), prefix="/ml")  # /ml/models, /ml/models/{name}/predict
loadonce.install_middleware(app)  # request ids, API keys, limits, the fast inference path

iris_model = loadonce.ModelDependency("iris")


class Flower(BaseModel):
    sepal_length: float
    sepal_width: float
    petal_length: float
    petal_width: float


@app.post("/classify")
async def classify(
    flower: Flower, model: Annotated[loadonce.Model, Depends(iris_model)]
) -> dict[str, str]:
    features = [flower.sepal_length, flower.sepal_width, flower.petal_length, flower.petal_width]
    [species] = await model.predict(features)  # runs in a thread, never on the event loop
    app.state.requests_served += 1
    return {"species": str(species)}
