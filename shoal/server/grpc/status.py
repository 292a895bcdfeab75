"""The runtime's HTTP-shaped errors as gRPC status codes, so both protocols fail the same way.

Each ``ApiError`` keeps its one-line message as the status details; ``Retry-After`` (429, 503)
travels as trailing metadata ``retry-after``. Anything unexpected is INTERNAL and logged,
as the HTTP side answers 500.
"""

from __future__ import annotations

import hmac
import logging

import grpc

from shoal.errors import ShoalError
from shoal.server.errors import ApiError, Unauthorized

log = logging.getLogger("shoal.server.grpc")

CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,  # the model has requests in flight: retry when they finish
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(status: int) -> grpc.StatusCode:
    """The gRPC code for an HTTP status (any other 4xx: INVALID_ARGUMENT, 5xx: INTERNAL)."""
    return CODES.get(status, grpc.StatusCode.INVALID_ARGUMENT if status < 500 else grpc.StatusCode.INTERNAL)


async def abort_with(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """End the RPC with the status that matches ``exc`` (raises, as ``context.abort`` does)."""
    if isinstance(exc, ApiError):
        retry = exc.headers.get("Retry-After")
        if retry:
            context.set_trailing_metadata((("retry-after", retry),))
        await context.abort(status_of(exc.status), exc.message)
    if isinstance(exc, ShoalError):  # the store is unreachable or misbehaves: transient, like HTTP's 503
        context.set_trailing_metadata((("retry-after", "1"),))
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    log.error("unexpected error in a gRPC call", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")


def check_token(context: grpc.aio.ServicerContext, token: str | None) -> None:
    """Model control needs ``authorization: Bearer <token>`` metadata when the server has a token."""
    if not token:
        return
    given = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), "")
    if isinstance(given, bytes):
        given = given.decode("latin-1")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise Unauthorized("repository calls need the metadata authorization: Bearer <token> (the server's "
                           "--token)")
