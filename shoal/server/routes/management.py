"""Model control: list, load, unload (``DELETE`` kept as an alias that unloads). Guarded by ``Authorization: Bearer`` when a token is configured."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from shoal.family.listing import cached_model_bytes, short_key, totals
from shoal.server.errors import Unavailable
from shoal.server.registry import ModelEntry, State
from shoal.server.routes.auth import require_token
from shoal.server.routes.common import json_response, runtime_of
from shoal.server.schemas import ModelInfo, ModelList

router = APIRouter(prefix="/models", tags=["management"], dependencies=[Depends(require_token)])


UNLOAD_DOC = """Unloads, does not delete: the model's weights leave memory (state `unloaded`), but the model stays in
this server's catalog, `GET /models` still lists it, and the next request for it loads it again. Nothing is
removed from the model store (`shoal models rm` does that). 409 while the model has requests in flight.
The same as `POST /v2/repository/models/{model_id}/unload`."""


def info(e: ModelEntry) -> dict:
    m = e.manifest
    b = cached_model_bytes(m) if m else None
    return ModelInfo(id=e.id, state=e.state.value, kind=m.kind if m else None, task=m.task if m else None,
                     precision=m.precision if m else None, bytes=e.bytes, last_used=e.last_used_wall,
                     load_ms=round(e.load_ms, 2) if e.load_ms is not None else None, loads=e.loads,
                     inflight=e.inflight, reason=e.reason, family=short_key(b.family) if b else None,
                     own_bytes=b.own_bytes if b else None, shared_bytes=b.shared_bytes if b else None).model_dump()


@router.get("", summary="Every model of this server: state, bytes (own and shared with its family), last use, "
            "load time; totals with each family's shared bytes once", response_model=ModelList)
async def list_models(request: Request) -> Response:
    reg = runtime_of(request).registry
    entries = list(reg.entries.values())
    sums = totals(cached_model_bytes(e.manifest) for e in entries if e.manifest is not None)
    return json_response({"models": [info(e) for e in entries], "resident_bytes": reg.resident_bytes,
                          "budget_bytes": reg.budget, "total_bytes": sums.total_bytes, "own_bytes": sums.own_bytes,
                          "shared_bytes": sums.shared_bytes,
                          "families": [{"family": short_key(f.key), "members": f.members,
                                        "shared_bytes": f.shared_bytes} for f in sums.families.values()]})


@router.get("/{model_id}", summary="One model's state", response_model=ModelInfo)
async def get_model(model_id: str, request: Request) -> Response:
    return json_response(info(await runtime_of(request).registry.entry(model_id)))


@router.post("/{model_id}/load", summary="Load a model now (retries a failed one)", response_model=ModelInfo)
async def load_model(model_id: str, request: Request) -> Response:
    reg = runtime_of(request).registry
    e = await reg.entry(model_id)
    await reg.load(e, retry_failed=True)
    if e.state is State.FAILED:
        raise Unavailable(f"model {e.id} failed to load: {e.reason}")
    return json_response(info(e))


@router.post("/{model_id}/unload", summary="Unload a model: free its memory; it stays served and listed",
             operation_id="unload_model", response_model=ModelInfo, description=UNLOAD_DOC)
async def unload_model(model_id: str, request: Request) -> Response:
    reg = runtime_of(request).registry
    e = await reg.entry(model_id)
    reg.evict(e)
    return json_response(info(e))


router.delete("/{model_id}", summary="Deprecated alias of POST /models/{model_id}/unload: unloads, does not delete",
              operation_id="unload_model_via_delete", response_model=ModelInfo, deprecated=True,
              description=UNLOAD_DOC + "\n\nDeprecated: a DELETE promises the resource is gone, and it is not "
              "(`GET /models/{model_id}` still answers 200). Kept for existing clients.")(unload_model)
