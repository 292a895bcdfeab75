"""HTTP errors of the runtime: every client mistake or overload is a clear 4xx/5xx JSON body, never a 500.

Each error carries its status, a one-line message meant for the caller, and the
headers that tell a client what to do next (``Retry-After`` for 429/503).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from shoal.errors import ShoalError

log = logging.getLogger("shoal.server")


class ApiError(Exception):
    """An error answered to the client as ``{"error": message, "code": code}``."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class Unprocessable(ApiError):
    status, code = 422, "invalid_input"


class Overloaded(ApiError):
    status, code = 429, "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})


class Unavailable(ApiError):
    status, code = 503, "unavailable"

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)} if retry_after_s else None)


class DeadlineExceeded(ApiError):
    status, code = 504, "deadline_exceeded"


class InferenceFailed(ApiError):
    """The model raised while running a batch: a real server-side fault, reported with its reason."""

    status, code = 500, "inference_failed"


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": message, "code": code}).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _field_path(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path: Starlette names only the first matching route's,
    and a path can have several routes (a hot path beside its documented twin)."""
    routes = request.app.router.routes
    allowed = [m for m in METHODS
               if any(r.matches({**request.scope, "method": m})[0] is Match.FULL for r in routes)]
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    """Map ApiError, FastAPI validation errors and unknown routes to the one JSON error shape."""

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        return error_response(422, "invalid_input", f"{_field_path(tuple(first['loc']))}: {first['msg']}")

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = "no such route: see /docs for the API" if exc.status_code == 404 else str(exc.detail)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette names only the first matching route's methods
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        return error_response(exc.status_code, "http_error", message, headers)

    async def on_shoal_error(request: Request, exc: Exception) -> Response:
        return error_response(503, "store_error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                              {"Retry-After": "1"})

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", f"internal error: {type(exc).__name__}")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(ShoalError, on_shoal_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
