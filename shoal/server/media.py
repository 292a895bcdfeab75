"""Request bodies that are not JSON: raw image bytes (``image/*``) and multipart forms with a file part.

JSON bodies still go through ``body.read_json``. Everything is read under the same
byte cap, streaming, so an oversized upload is refused before it is held in memory.
Decoding the image itself is left to the handler's preprocess (an executor thread).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from shoal.server.body import read_bytes, read_json
from shoal.server.errors import BadRequest

FILE_FIELDS = ("image", "file")
RAW_TYPES = ("application/octet-stream",)
_BINARY = {"schema": {"type": "string", "format": "binary"}}
MEDIA_CONTENT = {  # OpenAPI request-body entries for the binary forms
    "image/jpeg": _BINARY, "image/png": _BINARY,
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                       "properties": {"image": {"type": "string", "format": "binary"}}}},
}


@dataclass
class MediaBody:
    """A binary input (an image file) with its options from the query string or the form's other fields."""

    data: bytes
    content_type: str
    params: dict[str, str] = field(default_factory=dict)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, cap: int) -> Any:
    """A MediaBody for ``image/*``, ``application/octet-stream`` and ``multipart/form-data``; parsed JSON otherwise.

    Any other Content-Type is read as JSON, as before (curl's ``-d`` sends form-urlencoded).
    """
    kind = media_type(request)
    if kind.startswith("image/") or kind in RAW_TYPES:
        data = await read_bytes(request, cap)
        if not data:
            raise BadRequest(f"image body is empty (0 bytes) for Content-Type {kind}")
        return MediaBody(data, kind, dict(request.query_params))
    if kind == "multipart/form-data":
        return await _read_multipart(request, cap)
    return await read_json(request, cap)


async def _read_multipart(request: Request, cap: int) -> MediaBody:
    raw = await read_bytes(request, cap)

    async def stream() -> AsyncGenerator[bytes, None]:
        yield raw

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=4, max_fields=32).parse()
    except MultiPartException as exc:
        raise BadRequest(f"multipart body is malformed: {exc.message}") from None
    try:
        files = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise BadRequest("multipart body has no file part: send the image as a form field named 'image'")
        name, upload = next(((k, v) for k, v in files if k in FILE_FIELDS), files[0])
        data = await upload.read()
        if not data:
            raise BadRequest(f"multipart file part {name!r} is empty (0 bytes)")
        params = dict(request.query_params)
        params.update({k: v for k, v in form.multi_items() if isinstance(v, str)})
        return MediaBody(data, (upload.content_type or "application/octet-stream").lower(), params)
    finally:
        await form.close()
