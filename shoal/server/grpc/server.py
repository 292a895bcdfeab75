"""Start and stop the gRPC server inside the app's lifespan: same process, same event loop, same runtime.

``grpc.aio`` runs on uvicorn's running loop (uvloop works), so gRPC calls and HTTP requests
share one registry and one scheduler without any cross-thread hand-off.
"""

from __future__ import annotations

import errno
import socket
import sys
from dataclasses import dataclass

import grpc

from shoal.errors import UsageError
from shoal.server.runtime import Runtime

GRACE_S = 5.0


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    host: str
    port: int

    async def stop(self) -> None:
        """Refuse new calls, let the ones in flight finish (up to GRACE_S), then close."""
        await self.server.stop(GRACE_S)


def check_port_free(host: str, port: int) -> None:
    """One clear line before anything starts if the gRPC port is taken (grpc's own error is vague)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"gRPC port {port} on {host} is already in use: pick another with --grpc-port") \
                    from None
            raise UsageError(f"cannot listen for gRPC on {host}:{port}: {exc.strerror}") from None


async def start_grpc(runtime: Runtime) -> GrpcServer:
    """Serve KServe v2 gRPC on ``settings.grpc_port``; prints the address it listens at."""
    from tritonclient.grpc import service_pb2_grpc as pbg

    from shoal.server.grpc.servicer import InferenceServicer

    settings = runtime.settings
    assert settings.grpc_port is not None
    options = [
        ("grpc.so_reuseport", 0),  # a taken port must fail, not be silently shared with another server
        ("grpc.max_receive_message_length", settings.max_body_bytes),  # the HTTP body cap: RESOURCE_EXHAUSTED
        ("grpc.max_send_message_length", -1),
    ]
    server = grpc.aio.server(options=options)
    pbg.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(runtime), server)
    host = settings.host
    address = f"[{host}]:{settings.grpc_port}" if ":" in host else f"{host}:{settings.grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise UsageError(f"cannot listen for gRPC on {address}: {exc}") from None
    await server.start()
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    print(f"shoal serve: KServe v2 gRPC at {where}", file=sys.stderr, flush=True)
    return GrpcServer(server, host, port)
