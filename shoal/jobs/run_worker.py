"""The `shoal worker` process: a runtime fed by the job queue, drained cleanly on SIGTERM.

Start-up and shutdown are the process host's (``shoal.server.process``), the same as
`shoal serve`'s; only the extension (jobs, with workers) and the app (health only) differ.
"""

from __future__ import annotations

import sys

from shoal.config import Settings
from shoal.devices import Device
from shoal.jobs.settings import AsyncSettings


def run_worker(settings: Settings, async_settings: AsyncSettings, device: Device, catalog: list[str] | None,
               port: int | None, log_level: str) -> None:
    from shoal.jobs.service import AsyncService
    from shoal.server.app import create_health_app
    from shoal.server.process import bind_socket, prepare, run_headless, serve_http
    from shoal.server.runtime import Runtime

    threads = prepare(settings, device, log_level)
    sock = bind_socket(settings.host, port) if port is not None else None
    runtime = Runtime(settings, device, catalog)
    service = AsyncService(runtime, async_settings, workers=True)
    models = "every model in the store" if catalog is None else f"{len(catalog)} models"
    where = f", metrics on http://{settings.host}:{sock.getsockname()[1]}/metrics" if sock else ""
    print(f"shoal worker: {models} from {runtime.store.uri} on {device} ({settings.executors} executor(s) x "
          f"{threads} thread(s)), jobs from {service.queue.uri}, results to {service.locations.root.uri}{where}",
          file=sys.stderr, flush=True)
    if sock is None:
        run_headless(runtime, [service])
    else:
        serve_http(create_health_app(runtime, [service]), sock, log_level)
