"""The app factories: FastAPI apps around one Runtime, with no import-time state.

Extensions (asynchronous jobs, ...) are handed in by the caller and mount their own
routes; the start/stop sequence is ``shoal.server.process.running``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from shoal.server.errors import install_error_handlers
from shoal.server.openapi import install_openapi
from shoal.server.process import Extension, running
from shoal.server.routes import health, include_routes
from shoal.server.runtime import Runtime

DESCRIPTION = """Many models per process. Native `POST /predictions/{model_id}`, KServe v2 under `/v2` (with
Triton's binary tensor data and model repository extensions), SageMaker `POST /invocations`, model control
under `/models`, Prometheus `/metrics`. Every error is `{"error": "...", "code": "..."}`."""


def create_app(runtime: Runtime, extensions: Sequence[Extension] = ()) -> FastAPI:
    """An app serving ``runtime``; preloading starts with the app and readiness follows it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(runtime, extensions, grpc=runtime.settings.grpc_port is not None):
            yield

    app = FastAPI(title="shoal", description=DESCRIPTION, version="1", lifespan=lifespan, redirect_slashes=False)
    app.state.runtime = runtime
    install_error_handlers(app)
    include_routes(app)
    for ext in extensions:
        ext.install(app)
    install_openapi(app)
    return app


def create_health_app(runtime: Runtime, extensions: Sequence[Extension] = ()) -> FastAPI:
    """Health and metrics only (``shoal worker --port``): probes and the autoscaler, no predictions."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(runtime, extensions):
            yield

    app = FastAPI(title="shoal worker", lifespan=lifespan, redirect_slashes=False)
    app.state.runtime = runtime
    install_error_handlers(app)
    app.include_router(health.router)
    return app
