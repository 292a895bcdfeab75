"""KServe v2 (Open Inference Protocol): server and model metadata, readiness, infer."""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

import shoal
from shoal.server.body import read_json
from shoal.server.handlers import v2_metadata
from shoal.server.registry import State
from shoal.server.routes.common import hot_path, json_response, runtime_of, timeout_of
from shoal.server.schemas import V2InferRequest, body_schema, validate

router = APIRouter(prefix="/v2", tags=["kserve-v2"])
PLATFORM = {"torchscript": "pytorch_torchscript", "neuron": "neuron_torchscript", "neuronx": "neuronx_torchscript"}


@router.get("", summary="Server metadata")
async def server_metadata() -> Response:
    return json_response({"name": "shoal", "version": getattr(shoal, "__version__", "0"), "extensions": []})


@router.get("/models/{model_id}", summary="Model metadata")
async def model_metadata(model_id: str, request: Request) -> Response:
    rt = runtime_of(request)
    e = await rt.registry.entry(model_id)
    if e.manifest is None:
        e.manifest = await rt.registry.run_io(rt.store.read_manifest, model_id)  # type: ignore[assignment]
    assert e.manifest is not None
    meta = {"name": e.id, "versions": ["1"], "platform": PLATFORM.get(e.manifest.format, e.manifest.format),
            **v2_metadata(e.manifest)}
    return json_response(meta)


@router.get("/models/{model_id}/ready", summary="Model readiness: 200 when resident, 400 when not (as Triton), "
            "404 when unknown")
async def model_ready(model_id: str, request: Request) -> Response:
    """The protocol answers 200 or a 4xx; Triton's 400 for a known model that is not resident (unloaded,
    loading or failed), with its state and reason in the body. A prediction to it still loads it."""
    e = await runtime_of(request).registry.entry(model_id)
    ready = e.state is State.READY
    body = {"name": e.id, "ready": ready, "state": e.state.value, **({"reason": e.reason} if e.reason else {})}
    return json_response(body, status=200 if ready else 400)


async def infer(model_id: str, request: Request) -> Response:
    received = time.perf_counter()
    rt = runtime_of(request)
    req = validate(V2InferRequest, await read_json(request, rt.settings.max_body_bytes))
    out = await rt.infer(model_id, req, parse="v2", encode=False, received=received,
                         timeout_s=timeout_of(rt, request))
    return json_response({"model_name": model_id, "model_version": "1", "id": req.id,
                          "parameters": {"timings": out.timings}, "outputs": out.handler.to_v2(out.results)})


hot_path(router, "/v2/models/{model_id}/infer", ["POST"], infer, "model_id")
router.post("/models/{model_id}/infer", summary="Infer (KServe v2 tensors)",
            openapi_extra=body_schema(V2InferRequest))(infer)
