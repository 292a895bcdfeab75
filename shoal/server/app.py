"""The app factory: a FastAPI app around one Runtime, with no import-time state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from shoal.jobs.service import AsyncService
from shoal.server.errors import install_error_handlers
from shoal.server.openapi import install_openapi
from shoal.server.routes import async_jobs, include_routes
from shoal.server.runtime import Runtime

DESCRIPTION = """Many models per process. Native `POST /predictions/{model_id}`, KServe v2 under `/v2` (with
Triton's binary tensor data and model repository extensions), SageMaker `POST /invocations`, model control
under `/models`, Prometheus `/metrics`. Every error is `{"error": "...", "code": "..."}`."""


def create_app(runtime: Runtime) -> FastAPI:
    """An app serving ``runtime``; preloading starts with the app and readiness follows it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(runtime.start())
        grpc = None
        if runtime.settings.grpc_port is not None:  # KServe v2 gRPC on the same loop and runtime
            from shoal.server.grpc.server import start_grpc

            grpc = await start_grpc(runtime)
        await jobs.start()
        try:
            yield
        finally:
            if grpc is not None:
                await grpc.stop()  # lets calls in flight finish while the runtime still runs
            await jobs.stop()  # drains async workers before the executors go away
            task.cancel()
            runtime.shutdown()

    app = FastAPI(title="shoal", description=DESCRIPTION, version="1", lifespan=lifespan, redirect_slashes=False)
    app.state.runtime = runtime
    app.state.jobs = jobs = AsyncService(runtime)
    install_error_handlers(app)
    include_routes(app)
    app.include_router(async_jobs.router)
    install_openapi(app)
    return app
