"""Cheap liveness/readiness probes and the Prometheus scrape endpoint."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from shoal.server.routes.common import hot_path, json_response, runtime_of

router = APIRouter(tags=["health"])
_OK = b'{"status":"ok"}'


async def ok(request: Request) -> Response:
    return Response(_OK, media_type="application/json")


# no-op probes: plain routes first (cheapest path), FastAPI twins for /docs
for _path, _doc in (("/ping", "SageMaker health check (a no-op)"), ("/v2/health/live", "KServe v2 liveness (a no-op)")):
    hot_path(router, _path, ["GET"], ok)
    router.get(_path, summary=_doc)(ok)


@router.get("/v2/health/ready", summary="KServe v2 readiness: 200 once preloading is done")
async def ready(request: Request) -> Response:
    rt = runtime_of(request)
    if rt.ready:
        return Response(b'{"ready":true}', media_type="application/json")
    return json_response({"ready": False, "reason": rt.not_ready_reason}, status=503,
                         headers={"Retry-After": "1"})


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    # Rendering thousands of series takes milliseconds: do it on a thread, not the event loop.
    text = await asyncio.get_running_loop().run_in_executor(None, runtime_of(request).metrics.render)
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")
