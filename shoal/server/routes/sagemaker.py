"""SageMaker multi-model endpoint contract: ``POST /invocations`` + ``X-Amzn-SageMaker-Target-Model``."""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from shoal.server.media import read_body
from shoal.server.errors import BadRequest
from shoal.server.routes.common import hot_path, prediction_response, runtime_of, timeout_of
from shoal.server.routes.predictions import PREDICTION_BODY
from shoal.server.schemas import PredictionResponse

router = APIRouter(tags=["sagemaker"])
TARGET_HEADER = "x-amzn-sagemaker-target-model"


async def invocations(request: Request) -> Response:
    received = time.perf_counter()
    target = request.headers.get(TARGET_HEADER)
    if not target:
        raise BadRequest("header X-Amzn-SageMaker-Target-Model is required: it names the model to invoke")
    model_id = target.removesuffix(".tar.gz")
    rt = runtime_of(request)
    body = await read_body(request, rt.settings.max_body_bytes)
    out = await rt.infer(model_id, body, received=received, timeout_s=timeout_of(rt, request))
    return prediction_response(model_id, out)


hot_path(router, "/invocations", ["POST"], invocations)
_DOC = {**PREDICTION_BODY, "parameters": [
    {"name": "X-Amzn-SageMaker-Target-Model", "in": "header", "required": True, "schema": {"type": "string"},
     "description": "the model to invoke (a trailing .tar.gz, as SageMaker sends it, is ignored)"},
    {"name": "X-Request-Timeout-Ms", "in": "header", "required": False, "schema": {"type": "number"},
     "description": "a deadline shorter than the server's, in milliseconds"},
]}
router.post("/invocations", summary="Predict with the model named by X-Amzn-SageMaker-Target-Model",
            response_model=PredictionResponse, openapi_extra=_DOC)(invocations)
