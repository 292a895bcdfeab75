"""Read a JSON request body under a size cap, streaming, so an oversized upload is refused early (413).

Every JSON body the server or its async worker parses goes through ``decode_json``, so each way
a body can fail to be JSON is one clear reason (a 400), never an exception nobody expected.
"""

from __future__ import annotations

import json
import sys
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


class NotJson(ValueError):
    """A body that is not JSON this server accepts; the message ("is not valid JSON: ...") says why."""


def decode_json(raw: bytes | str) -> Any:
    """``json.loads`` whose every failure is a ``NotJson`` with the reason.

    Why RecursionError too: the parser recurses once per nesting level, so ``[`` x 100,000 raises
    RecursionError (not a JSONDecodeError); uncaught, a client could turn malformed input into a 500.
    """
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise NotJson(f"is not valid JSON: {exc.msg}") from None
    except UnicodeDecodeError:
        raise NotJson("is not valid JSON: not UTF-8") from None
    except RecursionError:
        raise NotJson(f"is JSON nested deeper than this server parses (about {sys.getrecursionlimit()} "
                      "levels of [ or {)") from None


async def read_json(request: Request, cap: int) -> Any:
    """The parsed body; 413 past ``cap`` bytes (declared or streamed), 400 if it is not JSON."""
    raw = await read_bytes(request, cap)
    if not raw:
        raise BadRequest("request body is empty: send a JSON object, e.g. {\"text\": \"...\"}")
    try:
        return decode_json(raw)
    except NotJson as exc:
        raise BadRequest(f"body {exc}") from None
