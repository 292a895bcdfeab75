"""The native protocol: ``POST /predictions/{id}`` (JSON) and ``GET /predictions/{id}?seq_0=...``."""

from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from shoal.server.codecs.detector import ImageBatchRequest, ImageRequest
from shoal.server.media import MEDIA_CONTENT, read_body
from shoal.server.routes.common import hot_path, prediction_response, runtime_of, timeout_of
from shoal.server.schemas import (PredictionResponse, QABatchRequest, QARequest, TextBatchRequest, TextRequest,
                                  body_schema)

router = APIRouter(tags=["predictions"])
PREDICTION_BODY = body_schema(TextRequest, TextBatchRequest, QARequest, QABatchRequest, ImageRequest, ImageBatchRequest)
PREDICTION_BODY["requestBody"]["content"].update(MEDIA_CONTENT)  # detectors also take image bytes and multipart


async def predict(model_id: str, request: Request) -> Response:
    received = time.perf_counter()
    rt = runtime_of(request)
    body = await read_body(request, rt.settings.max_body_bytes)
    out = await rt.infer(model_id, body, received=received, timeout_s=timeout_of(rt, request))
    return prediction_response(model_id, out)


hot_path(router, "/predictions/{model_id}", ["POST"], predict, "model_id")
router.post("/predictions/{model_id}", summary="Predict with one model", response_model=PredictionResponse,
            openapi_extra=PREDICTION_BODY)(predict)


QUERY_DOC = {"parameters": [
    {"name": "seq_0", "in": "query", "required": True, "schema": {"type": "string"},
     "description": "the text (question-answering: the question)"},
    {"name": "seq_1", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "the second sequence of a sentence pair (question-answering: the context, required)"},
]}


@router.get("/predictions/{model_id}", summary="Predict from query parameters (seq_0, seq_1; text models)",
            response_model=PredictionResponse, openapi_extra=QUERY_DOC)
async def predict_query(model_id: str, request: Request) -> Response:
    received = time.perf_counter()
    rt = runtime_of(request)
    out = await rt.infer(model_id, dict(request.query_params), parse="query", received=received,
                         timeout_s=timeout_of(rt, request))
    return prediction_response(model_id, out)
