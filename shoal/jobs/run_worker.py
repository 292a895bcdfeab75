"""The `shoal worker` process: a runtime fed by the job queue, drained cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from shoal.config import Settings
from shoal.devices import Device
from shoal.jobs.settings import AsyncSettings


def run_worker(settings: Settings, async_settings: AsyncSettings, device: Device, catalog: list[str] | None,
               port: int | None, log_level: str) -> None:
    from shoal.jobs.service import AsyncService
    from shoal.server.runtime import Runtime
    from shoal.server.serve import bind_socket, pin

    threads = pin(device, settings)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = bind_socket(settings.host, port) if port is not None else None
    runtime = Runtime(settings, device, catalog)
    service = AsyncService(runtime, async_settings, workers=True)
    models = "every model in the store" if catalog is None else f"{len(catalog)} models"
    where = f", metrics on http://{settings.host}:{sock.getsockname()[1]}/metrics" if sock else ""
    print(f"shoal worker: {models} from {runtime.store.uri} on {device} ({settings.executors} executor(s) x "
          f"{threads} thread(s)), jobs from {service.queue.uri}, results to {service.locations.root.uri}{where}",
          file=sys.stderr, flush=True)
    if sock is None:
        _run(_plain(runtime, service))
    else:
        _serve_health(runtime, service, sock, log_level)


async def _plain(runtime: "object", service: "object") -> None:
    from shoal.jobs.service import AsyncService
    from shoal.server.runtime import Runtime

    assert isinstance(runtime, Runtime) and isinstance(service, AsyncService)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = loop.create_task(runtime.start())
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()
        task.cancel()
        runtime.shutdown()


def _serve_health(runtime: "object", service: "object", sock: "object", log_level: str) -> None:
    import uvicorn
    from fastapi import FastAPI

    from shoal.server.errors import install_error_handlers
    from shoal.server.routes import health

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(runtime.start())  # type: ignore[attr-defined]
        await service.start()  # type: ignore[attr-defined]
        try:
            yield
        finally:
            await service.stop()  # type: ignore[attr-defined]
            task.cancel()
            runtime.shutdown()  # type: ignore[attr-defined]

    app = FastAPI(title="shoal worker", lifespan=lifespan, redirect_slashes=False)
    app.state.runtime = runtime
    install_error_handlers(app)
    app.include_router(health.router)
    config = uvicorn.Config(app, loop="uvloop", http="httptools", lifespan="on", access_log=False,
                            log_level=log_level, timeout_graceful_shutdown=5, server_header=False)
    uvicorn.Server(config).run(sockets=[sock])  # type: ignore[list-item]


def _run(coro: "object") -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
