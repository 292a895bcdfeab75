"""What every route module needs: the runtime of the app and a fast JSON response."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shoal.server.runtime import Outcome, Runtime


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
