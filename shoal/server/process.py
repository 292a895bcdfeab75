"""The process host: what every long-running runtime process does around its Runtime, written once.

`shoal serve` and `shoal worker` both run a Runtime in one pinned process; before this module
they each spelled out the start-up and drifted (the worker had no malloc tuning, no switch
interval, no header cap). Here live, in order: malloc tuning (before any weights exist),
device pinning, the GIL switch interval, logging, the listening socket, uvicorn with the
bounded-header protocol, and the start/stop sequence of the runtime and its extensions.

An *extension* (e.g. asynchronous jobs) is anything with ``install(app)``, ``start()`` and
``stop()``; the caller passes them in, so the server package never imports what plugs into it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

from shoal.config import Settings
from shoal.devices import Device, pin_current_process, process_env
from shoal.errors import UsageError
from shoal.server.executor import check_device, executor_layout
from shoal.server.malloc_tuning import tune_malloc

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shoal.server.runtime import Runtime

SWITCH_INTERVAL_S = 0.001
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger("shoal.server.process")


class Extension(Protocol):
    """Something that runs beside the runtime in the same process (started after it, stopped before it)."""

    def install(self, app: "FastAPI") -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


ExtensionFactory = Callable[["Runtime"], Extension]


def prepare(settings: Settings, device: Device, log_level: str) -> int:
    """Tune malloc, pin to ``device``, set the switch interval and logging; returns threads per executor."""
    tuned = tune_malloc()  # before any weights are allocated: see shoal/server/malloc_tuning.py
    threads = pin(device, settings)
    # Executor threads hand results back while the event loop runs Python; a 1 ms switch interval
    # (default 5 ms) bounds how long a finished forward waits for the GIL.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    log.info("process host: malloc tuning %s, switch interval %g s, %d thread(s) per executor",
             "applied" if tuned else "off", sys.getswitchinterval(), threads)
    return threads


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


@asynccontextmanager
async def running(runtime: "Runtime", extensions: Sequence[Extension] = (), grpc: bool = False
                  ) -> AsyncIterator[None]:
    """The one start/stop sequence: runtime, gRPC, extensions up; then gRPC, extensions, runtime down."""
    task = asyncio.get_running_loop().create_task(runtime.start())
    grpc_server: Any = None
    if grpc:  # KServe v2 gRPC on the same loop and runtime
        from shoal.server.grpc.server import start_grpc

        grpc_server = await start_grpc(runtime)
    for ext in extensions:
        await ext.start()
    try:
        yield
    finally:
        if grpc_server is not None:
            await grpc_server.stop()  # lets calls in flight finish while the runtime still runs
        for ext in reversed(extensions):
            await ext.stop()  # e.g. drains async workers before the executors go away
        task.cancel()
        runtime.shutdown()


def serve_http(app: "FastAPI", sock: socket.socket, log_level: str) -> None:
    """Run uvicorn on ``sock`` with the bounded request-head protocol (431 past 64 KiB of headers)."""
    import uvicorn

    from shoal.server.http_limits import BoundedHttpToolsProtocol

    config = uvicorn.Config(app, loop="uvloop", http=BoundedHttpToolsProtocol, lifespan="on", access_log=False,
                            log_level=log_level, timeout_graceful_shutdown=5, server_header=False)
    uvicorn.Server(config).run(sockets=[sock])


def run_headless(runtime: "Runtime", extensions: Sequence[Extension]) -> None:
    """Run the runtime and its extensions without HTTP until SIGTERM or SIGINT, then stop in order."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with running(runtime, extensions):
            await stop.wait()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
