"""Start one server process: pin it to its device, bind the socket, run uvicorn around the app."""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys

from shoal.config import Settings
from shoal.devices import Device, pin_current_process, process_env
from shoal.errors import UsageError
from shoal.server.executor import check_device, executor_layout


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn, so a taken port is one clear line (and port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use: pick another with --port") from None
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def pin(device: Device, settings: Settings) -> int:
    """Pin this process to ``device`` (environment, affinity, torch threads); returns threads per executor."""
    _, threads = executor_layout(device, settings.executors, settings.threads)
    for key, value in process_env(device, threads).items():
        os.environ.setdefault(key, value)
    pin_current_process(device)
    check_device(device)
    import torch

    torch.set_num_threads(threads)
    # TorchScript's legacy graph executor optimises on the first call instead of profiling one call
    # and optimising on the next: one warm-up forward per load instead of two (~60-150 ms less per
    # cold load of a MiniLM here) at the same steady-state speed (docs/BENCHMARKS.md, ## server).
    torch._C._jit_set_profiling_executor(settings.jit_profiling)
    return threads


def run(settings: Settings, device: Device, catalog: list[str] | None, log_level: str = "warning") -> None:
    import uvicorn

    from shoal.server.allocator import tune_malloc
    from shoal.server.app import create_app
    from shoal.server.http_limits import BoundedHttpToolsProtocol
    from shoal.server.runtime import Runtime

    tune_malloc()  # before any weights are allocated: see shoal/server/allocator.py
    threads = pin(device, settings)
    # Executor threads hand results back while the event loop runs Python; a 1 ms switch interval
    # (default 5 ms) bounds how long a finished forward waits for the GIL.
    sys.setswitchinterval(0.001)
    sock = bind_socket(settings.host, settings.port)
    if settings.grpc_port is not None:
        from shoal.server.grpc.server import check_port_free

        check_port_free(settings.host, settings.grpc_port)  # bound for real when the app starts
    runtime = Runtime(settings, device, catalog)
    app = create_app(runtime)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(app, loop="uvloop", http=BoundedHttpToolsProtocol, lifespan="on", access_log=False,
                            log_level=log_level, timeout_graceful_shutdown=5, server_header=False)
    host, port = sock.getsockname()[:2]
    models = "every model in the store" if catalog is None else f"{len(catalog)} models"
    print(f"shoal serve: {models} from {runtime.store.uri} on {device} ({runtime.executor.executors} executor(s) "
          f"x {threads} thread(s)), listening on http://{host}:{port}", file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])
