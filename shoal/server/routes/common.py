"""What every route module needs: the runtime of the app and a fast JSON response."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from shoal.server.runtime import Outcome, Runtime


def hot_path(router: APIRouter, path: str, methods: list[str],
             endpoint: Callable[..., Awaitable[Response]], *path_params: str) -> None:
    """Also serve ``path`` through a plain Starlette route placed before the documented FastAPI one.

    FastAPI's per-request dependency solving costs tens of microseconds; the plain route
    skips it and wins the match, while the FastAPI route (same function) keeps /docs complete.
    Call this before decorating ``endpoint`` with the router.
    """

    async def plain(request: Request) -> Response:
        return await endpoint(*(request.path_params[p] for p in path_params), request)

    router.add_route(path, plain, methods=methods, include_in_schema=False)


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def timeout_of(rt: Runtime, request: Request) -> float:
    """The request's deadline in seconds (the server's, shortened by header X-Request-Timeout-Ms)."""
    return rt.timeout_of(request.headers.get("x-request-timeout-ms"))


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(data).encode(), status_code=status, media_type="application/json", headers=headers)


def prediction_response(model_id: str, out: Outcome) -> Response:
    """The native response; the prediction JSON was already encoded on the executor thread."""
    key = "prediction" if out.single else "predictions"
    text = out.json if out.json is not None else json.dumps(out.results[0] if out.single else out.results)
    body = f'{{"model_id":{json.dumps(model_id)},"{key}":{text},"timings":{json.dumps(out.timings)}}}'
    return Response(body.encode(), media_type="application/json")
