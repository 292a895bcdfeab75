"""KServe v2 gRPC for the load generator: pre-serialized requests over one channel per server.

Why one channel: gRPC multiplexes concurrent calls over one HTTP/2 connection, which is how
its clients (Triton's included) talk to a server; each simulated client is a call, not a
socket. Requests are bytes serialized before the run and responses are not decoded (the
status is what the report needs), so the generator spends its time in grpc, not in protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from shoal.errors import UsageError
from shoal.loadtest.http import Endpoint, HttpError, Response

if TYPE_CHECKING:
    from shoal.loadtest.targets import Routes

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
_channels: dict[tuple[str, int], grpc.aio.Channel] = {}


def parse_grpc_target(text: str) -> Endpoint:
    """``grpc://host:port`` or ``host:port`` -> Endpoint; anything else is one clear line."""
    rest = text.split("://", 1)[1] if "://" in text else text
    if text.startswith(("http://", "https://")):
        raise UsageError(f"--protocol grpc: {text!r} is an HTTP URL; give the server's gRPC address as "
                         "--target grpc://HOST:PORT (shoal serve --grpc-port)")
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--target {text!r}: give the gRPC address as grpc://HOST:PORT")
    return Endpoint(host.strip("[]"), int(port), host.strip("[]"))


def _address(endpoint: Endpoint) -> str:
    host = endpoint.connect_host
    return f"[{host}]:{endpoint.port}" if ":" in host else f"{host}:{endpoint.port}"


@dataclass
class GrpcConnection:
    """The engine's connection interface (``request``, ``close``) over the process's channel to ``endpoint``."""

    endpoint: Endpoint
    timeout_s: float

    def __post_init__(self) -> None:
        key = (self.endpoint.connect_host, self.endpoint.port)
        channel = _channels.get(key)
        if channel is None:
            channel = _channels[key] = grpc.aio.insecure_channel(_address(self.endpoint), options=_OPTIONS)
        self._infer = channel.unary_unary(MODEL_INFER)  # no serializers: bytes in, bytes out

    async def request(self, method: str, path: str, body: bytes | None = None,
                      content_type: bytes = b"application/json") -> Response:
        """One ModelInfer call (``method``, ``path`` and ``content_type`` are HTTP's; the body says it all)."""
        try:
            data = await self._infer(body or b"", timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            details = exc.details() or ""
            if code is grpc.StatusCode.DEADLINE_EXCEEDED and "Deadline Exceeded" == details:
                raise HttpError("timeout", f"no response within {self.timeout_s:g}s") from None
            if code is grpc.StatusCode.UNAVAILABLE and ("connect" in details.lower() or "refused" in details.lower()):
                raise HttpError("connection", f"cannot connect to {_address(self.endpoint)}: {details}") from None
            raise HttpError(f"grpc_{code.name.lower()}", details[:200]) from None
        return Response(200, data)

    def close(self) -> None:
        """Nothing per client: the shared channel closes at the end of the run (``close_channels``)."""


async def close_channels() -> None:
    for channel in list(_channels.values()):
        await channel.close()
    _channels.clear()


def list_models(endpoint: Endpoint, timeout_s: float = 5.0) -> dict[str, str | None]:
    """Model ids the server's repository index lists, with a task guessed from each model's input names."""
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pbg

    with grpc.insecure_channel(_address(endpoint)) as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        try:
            index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=timeout_s)
            out: dict[str, str | None] = {}
            for m in index.models:
                inputs = {t.name for t in stub.ModelMetadata(pb.ModelMetadataRequest(name=m.name),
                                                              timeout=timeout_s).inputs}
                out[m.name] = ("question-answering" if {"question", "context"} <= inputs
                               else "detection" if "image" in inputs else None)
            return out
        except grpc.RpcError as exc:
            raise UsageError(f"target grpc://{_address(endpoint)} did not list its models "
                             f"({exc.code().name}: {exc.details()}): pass --model-ids") from None


def check_live(endpoint: Endpoint, timeout_s: float = 5.0) -> None:
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pbg

    with grpc.insecure_channel(_address(endpoint)) as channel:
        try:
            pbg.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise UsageError(f"cannot reach gRPC target {_address(endpoint)}: {exc.details()}") from None


def grpc_routes(target: str, model_ids: list[str] | None) -> "Routes":
    """Routes to one server's gRPC endpoint: its listed models, or ``model_ids``."""
    from shoal.loadtest.targets import Routes

    endpoint = parse_grpc_target(target)
    check_live(endpoint)
    if model_ids:
        try:
            listed = list_models(endpoint)
        except UsageError:
            listed = {}
        tasks = {m: listed.get(m) for m in model_ids}
    else:
        tasks = list_models(endpoint)
        if not tasks:
            raise UsageError(f"target {target} lists no models: trace some or pass --model-ids")
    return Routes({"target": endpoint}, {m: "target" for m in tasks}, tasks)
