"""KServe v2 (Open Inference Protocol): server and model metadata, readiness, infer."""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

import shoal
from shoal.server.body import read_bytes
from shoal.server.errors import BadRequest
from shoal.server.handlers import v2_metadata
from shoal.server.registry import State
from shoal.server.routes.common import hot_path, json_response, runtime_of, timeout_of
from shoal.server.schemas import V2InferRequest, body_schema
from shoal.server.v2_codec import decode_request, encode_response, parse_json_length

router = APIRouter(prefix="/v2", tags=["kserve-v2"])


def infer_doc() -> dict:
    """The request body as JSON or as JSON + binary data, and the header that tells them apart."""
    doc = body_schema(V2InferRequest)
    doc["requestBody"]["content"]["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    doc["parameters"] = [{"name": JSON_LENGTH_HEADER, "in": "header", "required": False,
                          "schema": {"type": "integer", "minimum": 1},
                          "description": "bytes of JSON at the start of the body; raw tensor data follows"}]
    return doc
JSON_LENGTH_HEADER = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "model_repository"]
INFER_DOC = """A JSON body, or (Triton's binary tensor data extension) a JSON header followed by raw tensor bytes,
with the header's length in `Inference-Header-Content-Length`: an input whose `parameters.binary_data_size`
is set takes that many bytes from the tail, in input order. BYTES elements are text for text models; for
detectors, JSON strings are base64 image files and raw bytes are the files themselves. Outputs come back as
raw bytes after the response's JSON (same header, `application/octet-stream`) when the request sets
`parameters.binary_data_output` or an output's `parameters.binary_data`."""
PLATFORM = {"torchscript": "pytorch_torchscript", "neuron": "neuron_torchscript", "neuronx": "neuronx_torchscript"}


@router.get("", summary="Server metadata")
async def server_metadata() -> Response:
    return json_response({"name": "shoal", "version": getattr(shoal, "__version__", "0"), "extensions": EXTENSIONS})


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
    """JSON, or Triton's binary tensor data extension when ``Inference-Header-Content-Length`` is sent."""
    received = time.perf_counter()
    rt = runtime_of(request)
    cap = rt.settings.max_body_bytes
    body = await read_bytes(request, cap)
    if not body:
        raise BadRequest("request body is empty: send a v2 infer request, {\"inputs\": [...]}")
    req = decode_request(body, parse_json_length(request.headers.get(JSON_LENGTH_HEADER), len(body)))
    out = await rt.infer(model_id, req, parse="v2", encode=False, received=received,
                         timeout_s=timeout_of(rt, request))
    head = {"model_name": model_id, "model_version": "1", **({"id": req.id} if req.id is not None else {}),
            "parameters": {"timings": out.timings}}
    encoded = encode_response(head, req, out.handler.codec.to_v2(out.results))
    extra = None if encoded.json_length is None else {JSON_LENGTH_HEADER: str(encoded.json_length)}
    return Response(encoded.body, media_type=encoded.content_type, headers=extra)


hot_path(router, "/v2/models/{model_id}/infer", ["POST"], infer, "model_id")
router.post("/models/{model_id}/infer", summary="Infer (KServe v2 tensors; Triton's binary tensor data extension)",
            description=INFER_DOC, openapi_extra=infer_doc())(infer)
