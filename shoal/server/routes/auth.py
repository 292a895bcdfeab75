"""The bearer token that guards model control (``/models``, ``/v2/repository``) when one is configured."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from shoal.server.errors import Unauthorized
from shoal.server.routes.common import runtime_of

SECURITY = [{"bearerAuth": []}]  # OpenAPI security requirement of guarded operations


def require_token(request: Request) -> None:
    token = runtime_of(request).settings.token
    if not token:
        return
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise Unauthorized("this route needs the header Authorization: Bearer <token> (the server's --token)")
