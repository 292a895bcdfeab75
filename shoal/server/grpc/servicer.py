"""``inference.GRPCInferenceService`` over the process's one ``Runtime``.

Every call goes where its HTTP twin goes: inference through ``Runtime.infer(parse="v2")``
(same registry, batcher, queue bounds, deadlines and metrics), model control through the
registry's ``load`` / ``evict`` behind the same bearer token as ``/models``. Calls the server
does not offer (streaming, shared memory, statistics, config) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

import shoal
from shoal.server.errors import BadRequest, DeadlineExceeded, NotFound, Unavailable
from shoal.server.grpc.status import abort_with, check_token
from shoal.server.grpc.tensors import request_from_proto, response_to_proto
from shoal.server.handlers import v2_metadata
from shoal.server.registry import ModelEntry, State
from shoal.server.routes.kserve import PLATFORM
from shoal.server.routes.repository import entry_of
from shoal.server.runtime import Runtime

VERSION = "1"
EXTENSIONS = ["model_repository"]  # binary_tensor_data is HTTP's; gRPC carries raw tensors by itself

R = TypeVar("R")
Call = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]


def mapped_errors(method: Call[R]) -> Call[R]:
    """Turn the runtime's errors into the matching gRPC status instead of UNKNOWN."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status; abort_with raises
            await abort_with(context, exc)
            raise  # unreachable: abort raises

    return wrapper


class InferenceServicer(pbg.GRPCInferenceServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    # -- health and metadata --
    @mapped_errors
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @mapped_errors
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.rt.ready)

    @mapped_errors
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        e = await self._entry(request.name, request.version)
        return pb.ModelReadyResponse(ready=e.state is State.READY)

    @mapped_errors
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="shoal", version=getattr(shoal, "__version__", "0"),
                                         extensions=EXTENSIONS)

    @mapped_errors
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        rt = self.rt
        e = await self._entry(request.name, request.version)
        if e.manifest is None:
            e.manifest = await rt.registry.run_io(rt.store.read_manifest, e.id)  # type: ignore[assignment]
        assert e.manifest is not None
        meta = v2_metadata(e.manifest)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=e.id, versions=[VERSION], platform=PLATFORM.get(e.manifest.format, e.manifest.format),
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]])

    # -- inference --
    @mapped_errors
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ModelInferResponse:
        received = time.perf_counter()
        _check_version(request.model_version)
        body = request_from_proto(request)
        timeout = self.rt.settings.request_timeout_s
        left = context.time_remaining()  # the client's deadline, if it set one
        if left is not None:
            timeout = min(timeout, left)
            if timeout <= 0:
                raise DeadlineExceeded("the call's deadline had already passed when it arrived")
        out = await self.rt.infer(request.model_name, body, parse="v2", encode=False, received=received,
                                  timeout_s=timeout)
        resp = pb.ModelInferResponse(model_name=request.model_name, model_version=VERSION, id=request.id)
        for key, value in out.timings.items():  # as HTTP's parameters.timings: ms, and the batch it ran in
            if key == "batch_size":
                resp.parameters[key].int64_param = int(value)
            else:
                resp.parameters[key].double_param = float(value)
        response_to_proto(resp, body, out.handler.codec.to_v2(out.results), raw=bool(request.raw_input_contents))
        return resp

    # -- model repository (guarded like /models) --
    @mapped_errors
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
                              ) -> pb.RepositoryIndexResponse:
        check_token(context, self.rt.settings.token)
        _check_repository(request.repository_name)
        reg = self.rt.registry
        rows = [entry_of(e) for e in list(reg.entries.values())]  # the rows HTTP's /v2/repository/index lists
        if reg.open_catalog:  # ids pushed to the store since: servable on their first request, so listed
            stored = await reg.run_io(reg.store.list_ids)
            rows += [{"name": i, "version": VERSION, "state": "UNAVAILABLE", "reason": "unloaded"}
                     for i in stored if i not in reg.entries]  # type: ignore[union-attr]
        if request.ready:
            rows = [r for r in rows if r["state"] == "READY"]
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[index(**r) for r in sorted(rows, key=lambda r: r["name"])])

    @mapped_errors
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
                                  ) -> pb.RepositoryModelLoadResponse:
        check_token(context, self.rt.settings.token)
        _check_repository(request.repository_name)
        overrides = sorted(k for k in request.parameters if k == "config" or k.startswith("file:"))
        if overrides:
            raise BadRequest(f"parameters.{overrides[0]}: loading from a config or files in the request is not "
                             "supported; push the model to the store (shoal models push) and load it by id")
        reg = self.rt.registry
        e = await reg.entry(request.model_name)
        await reg.load(e, retry_failed=True)
        if e.state is State.FAILED:
            raise Unavailable(f"model {e.id} failed to load: {e.reason}")
        return pb.RepositoryModelLoadResponse()

    @mapped_errors
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context: grpc.aio.ServicerContext) -> pb.RepositoryModelUnloadResponse:
        check_token(context, self.rt.settings.token)
        _check_repository(request.repository_name)
        reg = self.rt.registry  # parameters (unload_dependents) need nothing: no model here has dependents
        reg.evict(await reg.entry(request.model_name))  # 409 -> ABORTED while it has requests in flight
        return pb.RepositoryModelUnloadResponse()

    async def _entry(self, name: str, version: str) -> ModelEntry:
        _check_version(version)
        if not name:
            raise BadRequest("name: the model name is required")
        return await self.rt.registry.entry(name)


def _check_version(version: str) -> None:
    """Every model has one version, "1"; empty means the latest, as the protocol says."""
    if version and version != VERSION:
        raise NotFound(f"version {version[:40]!r}: models here have one version, {VERSION!r} (or leave it empty)")


def _check_repository(name: str) -> None:
    if name:
        raise NotFound(f"repository {name[:80]!r}: this server has one repository, its store (leave "
                       "repository_name empty)")
