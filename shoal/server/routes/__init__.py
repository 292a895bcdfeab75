"""HTTP routes, one module per protocol; ``include_routes`` mounts them all."""

from __future__ import annotations

from fastapi import FastAPI

from shoal.server.routes import health, kserve, management, predictions, repository, sagemaker


def include_routes(app: FastAPI) -> None:
    for module in (health, predictions, kserve, repository, sagemaker, management):
        app.include_router(module.router)
