"""Read a JSON request body under a size cap, streaming, so an oversized upload is refused early (413)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from shoal.server.errors import BadRequest, PayloadTooLarge


async def read_bytes(request: Request, cap: int) -> bytes:
    """The raw body; 413 past ``cap`` bytes, declared or streamed."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
        if size > cap:
            raise PayloadTooLarge(f"body of {size} bytes exceeds the limit of {cap} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise PayloadTooLarge(f"body exceeds the limit of {cap} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_json(request: Request, cap: int) -> Any:
    """The parsed body; 413 past ``cap`` bytes (declared or streamed), 400 if it is not JSON."""
    raw = await read_bytes(request, cap)
    if not raw:
        raise BadRequest("request body is empty: send a JSON object, e.g. {\"text\": \"...\"}")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = getattr(exc, "msg", "not UTF-8")
        raise BadRequest(f"body is not valid JSON: {msg}") from None
