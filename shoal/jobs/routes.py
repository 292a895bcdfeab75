"""Asynchronous inference: submit (202 at once, result later in the job store), status, cancel.

The payload (or a reference to one) is stored and the job queued *before* the 202, so
nothing accepted lives only in memory. Options go in the query string: ``ttl_s``,
``timeout_s``, ``on_success`` / ``on_failure`` / ``notify`` (webhook URLs, repeatable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from shoal.jobs.records import is_job_id
from shoal.jobs.submit import MODEL_KEYS, parse_options
from shoal.server.errors import NotFound, Unavailable
from shoal.server.routes.common import json_response

if TYPE_CHECKING:
    from shoal.jobs.service import AsyncService

router = APIRouter(prefix="/async", tags=["async"])

_SUBMIT_DOC = {
    "parameters": [
        {"name": "ttl_s", "in": "query", "required": False, "schema": {"type": "number"},
         "description": "seconds the job may wait in the queue before it fails as expired"},
        {"name": "timeout_s", "in": "query", "required": False, "schema": {"type": "number"},
         "description": "invocation timeout of the job (at most 3600)"},
        {"name": "on_success", "in": "query", "required": False, "schema": {"type": "array", "items": {
            "type": "string"}}, "description": "webhook URL told when the job succeeds (repeatable)"},
        {"name": "on_failure", "in": "query", "required": False, "schema": {"type": "array", "items": {
            "type": "string"}}, "description": "webhook URL told when the job fails (repeatable)"},
        {"name": "notify", "in": "query", "required": False, "schema": {"type": "array", "items": {
            "type": "string"}}, "description": "webhook URL told either way (repeatable)"},
        *({"name": k, "in": "query", "required": False, "schema": {"type": "string"},
           "description": f"detection option {k!r}, with an image body (as on POST /predictions)"}
          for k in MODEL_KEYS),
    ],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
        {"type": "object", "description": "the payload, as POST /predictions/{model_id} takes it"},
        {"type": "object", "required": ["input_location"], "properties": {"input_location": {
            "type": "string", "description": "s3://bucket/key, or file:// under the job store"}}},
    ]}}}},
}


def service_of(request: Request) -> "AsyncService":
    svc = getattr(request.app.state, "jobs", None)
    if svc is None:
        raise Unavailable("asynchronous inference is not enabled on this server")
    return svc  # type: ignore[no-any-return]


def _job_id(job_id: str) -> str:
    if not is_job_id(job_id):
        raise NotFound(f"no job {job_id[:80]!r}: job ids are 32 hex characters")
    return job_id


@router.post("/predictions/{model_id}", status_code=202, summary="Queue a prediction; the result goes to the "
             "job store", openapi_extra=_SUBMIT_DOC)
async def submit(model_id: str, request: Request) -> Response:
    svc = service_of(request)
    opts = parse_options(request.query_params, svc.s)
    rec = await svc.submit(model_id, request.headers, request.stream(), opts)
    body = {"job_id": rec.id, "model_id": rec.model_id, "state": rec.state.value,
            "output_location": rec.output_location, "status_url": f"/async/jobs/{rec.id}"}
    return json_response(body, status=202, headers={"Location": f"/async/jobs/{rec.id}"})


@router.get("/jobs/{job_id}", summary="A job's state: queued | running | succeeded | failed | cancelled")
async def status(job_id: str, request: Request) -> Response:
    rec = await service_of(request).get(_job_id(job_id))
    return json_response(rec.public())


@router.delete("/jobs/{job_id}", summary="Cancel a queued job (409 once it runs or has finished)")
async def cancel(job_id: str, request: Request) -> Response:
    rec = await service_of(request).cancel(_job_id(job_id))
    return json_response(rec.public())
