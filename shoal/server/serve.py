"""Start one `shoal serve` process: the process host around the full HTTP app (and its extensions)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from shoal.config import Settings
from shoal.devices import Device
from shoal.server import process
from shoal.server.process import ExtensionFactory


def run(settings: Settings, device: Device, catalog: list[str] | None, log_level: str = "warning",
        extensions: Sequence[ExtensionFactory] = ()) -> None:
    """Serve ``catalog`` (None: the whole store) on ``device``; ``extensions`` are built around the runtime."""
    from shoal.server.app import create_app
    from shoal.server.runtime import Runtime

    threads = process.prepare(settings, device, log_level)
    sock = process.bind_socket(settings.host, settings.port)
    if settings.grpc_port is not None:
        from shoal.server.grpc.server import check_port_free

        check_port_free(settings.host, settings.grpc_port)  # bound for real when the app starts
    runtime = Runtime(settings, device, catalog)
    app = create_app(runtime, [make(runtime) for make in extensions])
    host, port = sock.getsockname()[:2]
    models = "every model in the store" if catalog is None else f"{len(catalog)} models"
    print(f"shoal serve: {models} from {runtime.store.uri} on {device} ({runtime.executor.executors} executor(s) "
          f"x {threads} thread(s)), listening on http://{host}:{port}", file=sys.stderr, flush=True)
    process.serve_http(app, sock, log_level)
