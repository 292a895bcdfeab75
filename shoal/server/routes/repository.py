"""Triton's model repository extension: the index, load and unload, mapped onto the registry.

Guarded by the same bearer token as ``/models``. The repository is this server's catalog
(with an open catalog, also the store's ids not asked for yet). Unload frees a model's
memory but, unlike Triton's explicit mode, does not stop serving it: the next request
loads it again (shoal loads lazily). Loading from a config or files sent in the request
is not supported: models come from the store (``shoal models push``).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from shoal.server.body import read_bytes
from shoal.server.errors import BadRequest, Unavailable
from shoal.server.registry import ModelEntry, State
from shoal.server.routes.auth import require_token
from shoal.server.routes.common import json_response, runtime_of
from shoal.server.schemas import validate

router = APIRouter(prefix="/v2/repository", tags=["kserve-v2 repository"], dependencies=[Depends(require_token)])
TRITON_STATE = {State.READY: "READY", State.LOADING: "LOADING", State.UNLOADED: "UNAVAILABLE",
                State.FAILED: "UNAVAILABLE"}


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    ready: bool = Field(False, description="true: list only the models ready for inference")


class ControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    parameters: dict[str, Any] | None = Field(None, description="unload_dependents is accepted (shoal models "
                                              "have none); config and file: overrides are refused")


class IndexEntry(BaseModel):
    name: str
    version: str = "1"
    state: str = Field(description="READY | LOADING | UNAVAILABLE")
    reason: str = Field("", description="why not ready: unloaded, or the load failure")


def _doc(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": False, "content": {"application/json": {
        "schema": model.model_json_schema()}}}}


async def _body(request: Request, model: type[BaseModel]) -> Any:
    """The optional JSON body (tritonclient sends none for the index), validated against ``model``."""
    raw = await read_bytes(request, runtime_of(request).settings.max_body_bytes)
    if not raw.strip():
        return model()
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise BadRequest("body is not valid JSON") from None
    return validate(model, document)


def entry_of(e: ModelEntry) -> dict[str, str]:
    if e.state is State.FAILED:
        reason = e.reason or "failed to load"
    else:
        reason = "unloaded" if e.state is State.UNLOADED else ""
    return IndexEntry(name=e.id, state=TRITON_STATE[e.state], reason=reason).model_dump()


async def index(request: Request) -> Response:
    query: IndexRequest = await _body(request, IndexRequest)
    reg = runtime_of(request).registry
    rows = [entry_of(e) for e in list(reg.entries.values())]
    if reg.open_catalog:  # ids pushed to the store since: servable on their first request, so listed
        known = set(reg.entries)
        stored = await reg.run_io(reg.store.list_ids)
        rows += [IndexEntry(name=i, state="UNAVAILABLE", reason="unloaded").model_dump()
                 for i in stored if i not in known]  # type: ignore[union-attr]
    if query.ready:
        rows = [r for r in rows if r["state"] == "READY"]
    return json_response(sorted(rows, key=lambda r: r["name"]))


for _method in ("GET", "POST"):
    router.add_api_route("/index", index, methods=[_method], summary="The models of this server and their state",
                         response_model=list[IndexEntry], openapi_extra=_doc(IndexRequest) if _method == "POST" else None,
                         operation_id=f"repository_index_{_method.lower()}")


@router.post("/models/{model_id}/load", summary="Load a model now (retries a failed one)",
             response_model=IndexEntry, openapi_extra=_doc(ControlRequest))
async def load(model_id: str, request: Request) -> Response:
    body: ControlRequest = await _body(request, ControlRequest)
    overrides = [k for k in body.parameters or {} if k == "config" or k.startswith("file:")]
    if overrides:
        raise BadRequest(f"parameters.{overrides[0]}: loading from a config or files in the request is not "
                         "supported; push the model to the store (shoal models push) and load it by id")
    reg = runtime_of(request).registry
    e = await reg.entry(model_id)
    await reg.load(e, retry_failed=True)
    if e.state is State.FAILED:
        raise Unavailable(f"model {e.id} failed to load: {e.reason}")
    return json_response(entry_of(e))


@router.post("/models/{model_id}/unload", summary="Unload a model: free its memory; it stays served",
             description="The model stays in the index (UNAVAILABLE, reason unloaded) and the next request loads "
             "it again. 409 while it has requests in flight.", response_model=IndexEntry,
             openapi_extra=_doc(ControlRequest))
async def unload(model_id: str, request: Request) -> Response:
    await _body(request, ControlRequest)
    reg = runtime_of(request).registry
    e = await reg.entry(model_id)
    reg.evict(e)
    return json_response(entry_of(e))
