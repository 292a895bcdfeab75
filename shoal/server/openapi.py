"""The OpenAPI document, made to tell the truth about every operation.

FastAPI documents what it validates (a 200 and its own 422 shape); the routes read
bodies by hand, so this module adds what they really answer: every error status with
the one error body (``{"error", "code"}``) and its headers, the model-id and job-id
patterns (``shoal/ids.py``), the bearer token when one is configured, and content types
(``/metrics`` is Prometheus text). ``OPERATION_ERRORS`` is the single table of statuses;
a test fails when a route is added without an entry.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from shoal.ids import MODEL_ID_PATTERN

JOB_ID_PATTERN = "^[0-9a-f]{32}$"
GUARDED_PREFIXES = ("/models", "/v2/repository")
ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA = {
    "type": "object", "required": ["error", "code"],
    "properties": {"error": {"type": "string", "description": "one line meant for the caller"},
                   "code": {"type": "string", "description": "stable machine-readable reason, e.g. not_found, "
                            "overloaded, deadline_exceeded"}},
}
TIMEOUT_HEADER = {"name": "X-Request-Timeout-Ms", "in": "header", "required": False, "schema": {"type": "number"},
                  "description": "a deadline shorter than the server's, in milliseconds"}
_RETRY_AFTER = {"description": "seconds to wait before retrying", "schema": {"type": "integer", "minimum": 1}}
STATUS_TEXT = {
    400: "malformed request: not JSON, an invalid model id, a bad header or binary framing",
    401: "missing or wrong `Authorization: Bearer` token (only when the server has one)",
    404: "no such model (GET /models lists them) or job",
    409: "conflict: the model has requests in flight, or the job is no longer queued",
    413: "body over the server's limit (declared or streamed), or an image over its pixel cap",
    415: "a body type this operation does not queue",
    422: "well-formed but invalid for this model: a field, shape or input the model cannot take",
    429: "queue full: retry after `Retry-After` seconds",
    500: "the model raised while running the batch (a server-side fault, with its reason)",
    503: "model failed to load, memory budget busy, store unreachable, or not ready; may carry `Retry-After`",
    504: "no result within the request deadline (--request-timeout, or X-Request-Timeout-Ms)",
}
_MODEL = (400, 404, 503)
_BODY = (400, 413, 422)
_INFER = tuple(sorted({*_MODEL, *_BODY, 429, 500, 504}))
_CONTROL = tuple(sorted({401, *_MODEL, *_BODY}))
OPERATION_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("get", "/ping"): (),
    ("get", "/v2/health/live"): (),
    ("get", "/v2/health/ready"): (503,),
    ("get", "/metrics"): (),
    ("post", "/predictions/{model_id}"): _INFER,
    ("get", "/predictions/{model_id}"): _INFER,
    ("post", "/invocations"): _INFER,
    ("get", "/v2"): (),
    ("get", "/v2/models/{model_id}"): _MODEL,
    ("get", "/v2/models/{model_id}/ready"): _MODEL,
    ("post", "/v2/models/{model_id}/infer"): _INFER,
    ("get", "/v2/repository/index"): (401, *_BODY, 503),
    ("post", "/v2/repository/index"): (401, *_BODY, 503),
    ("post", "/v2/repository/models/{model_id}/load"): _CONTROL,
    ("post", "/v2/repository/models/{model_id}/unload"): tuple(sorted({*_CONTROL, 409})),
    ("get", "/models"): (401,),
    ("get", "/models/{model_id}"): (401, *_MODEL),
    ("post", "/models/{model_id}/load"): (401, *_MODEL),
    ("post", "/models/{model_id}/unload"): (401, *_MODEL, 409),
    ("delete", "/models/{model_id}"): (401, *_MODEL, 409),
    ("post", "/async/predictions/{model_id}"): tuple(sorted({*_MODEL, *_BODY, 415})),
    ("get", "/async/jobs/{job_id}"): (404, 503),
    ("delete", "/async/jobs/{job_id}"): (404, 409, 503),
}
# responses whose body is not the error shape
_READY_FALSE = {"type": "object", "required": ["ready"], "properties": {
    "ready": {"type": "boolean"}, "reason": {"type": "string"}}}
_MODEL_NOT_READY = {"type": "object", "required": ["name", "ready", "state"], "properties": {
    "name": {"type": "string"}, "ready": {"type": "boolean"}, "state": {"type": "string"},
    "reason": {"type": "string"}}}
SPECIAL_BODIES: dict[tuple[str, str, int], tuple[str, dict[str, Any]]] = {
    ("get", "/v2/health/ready", 503): ("not ready yet (preloading, or waiting for the store)", _READY_FALSE),
    ("get", "/v2/models/{model_id}/ready", 400): ("known but not resident (unloaded, loading or failed), as "
                                                  "Triton answers; also an invalid model id", {"anyOf": [
                                                      _MODEL_NOT_READY, ERROR_REF]}),
}
SUCCESS_CONTENT: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/metrics"): {"text/plain": {"schema": {"type": "string"},
                                         "example": "shoal_utilization 0.25\n"}},
    ("post", "/v2/models/{model_id}/infer"): {
        "application/json": {"schema": {"type": "object"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                     "x-description": "JSON header, then raw output tensors (binary data)"}},
}


def install_openapi(app: FastAPI) -> None:
    """Serve the corrected document at /openapi.json (built once, on first request)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            token = getattr(getattr(app.state, "runtime", None), "settings", None)
            app.openapi_schema = correct(doc, guarded=bool(getattr(token, "token", None)))
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]


def correct(doc: dict[str, Any], guarded: bool) -> dict[str, Any]:
    """``doc`` with true statuses, error bodies, parameter patterns and content types."""
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = ERROR_SCHEMA
    if guarded:
        components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                        "description": "the server's --token / SHOAL_TOKEN"}}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            _operation(path, method, op, guarded)
    return doc


def _operation(path: str, method: str, op: dict[str, Any], guarded: bool) -> None:
    statuses = OPERATION_ERRORS.get((method, path))
    if statuses is None:
        raise KeyError(f"{method.upper()} {path}: add its error statuses to shoal/server/openapi.py")
    responses = op.setdefault("responses", {})
    responses.pop("422", None)  # FastAPI's own validation shape; ours is the error body
    for code in ("200", "201", "202"):
        if code in responses and (content := SUCCESS_CONTENT.get((method, path))) is not None:
            responses[code]["content"] = content
    for status in statuses:
        if status == 401 and not guarded:
            continue
        text, schema = SPECIAL_BODIES.get((method, path, status), (STATUS_TEXT[status], ERROR_REF))
        response: dict[str, Any] = {"description": text, "content": {"application/json": {"schema": schema}}}
        if status in (429, 503):
            response["headers"] = {"Retry-After": {**_RETRY_AFTER, "required": status == 429}}
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}
        responses[str(status)] = response
    if guarded and path.startswith(GUARDED_PREFIXES):
        op["security"] = [{"bearerAuth": []}]
    params = op.setdefault("parameters", [])
    if statuses == _INFER and not any(p["name"] == TIMEOUT_HEADER["name"] for p in params):
        params.append(copy.deepcopy(TIMEOUT_HEADER))  # every inference route honours it
    for param in params:
        _pattern(param)
    if not params:
        del op["parameters"]


def _pattern(param: dict[str, Any]) -> None:
    schema = param.setdefault("schema", {})
    if param["in"] == "path" and param["name"] == "model_id":
        schema.update(pattern=MODEL_ID_PATTERN, maxLength=128)
        param["description"] = "a model id: 1-128 letters, digits, '.', '_' or '-', starting with a letter or " \
                               "digit, no '..'"
    elif param["in"] == "path" and param["name"] == "job_id":
        schema["pattern"] = JOB_ID_PATTERN
    elif param["in"] == "header" and param["name"] == "X-Amzn-SageMaker-Target-Model":
        schema.update(pattern=MODEL_ID_PATTERN)
    elif param["in"] == "header" and param["name"] == "X-Request-Timeout-Ms":
        schema.update(exclusiveMinimum=0)
