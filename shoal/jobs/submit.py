"""Accepting a job: options, the payload (stored before the 202) or a reference to one, the record.

Small bodies (up to ``async_inline_validate``) are read whole and checked before the
202: JSON, and the model's own input rules when it is resident. Larger bodies stream
to the job store in parts and are never held whole; they are checked when they run.
As on the synchronous route, ``image/*`` and ``application/octet-stream`` bodies are raw
bytes (an image for a detector); anything else is JSON.
"""

from __future__ import annotations

import asyncio
import json
import math
import mimetypes
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from shoal.errors import ShoalError, UsageError
from shoal.jobs.notify import MAX_TARGETS, check_webhook_url
from shoal.jobs.objects import Locations
from shoal.jobs.records import JobRecord, new_job_id
from shoal.jobs.settings import AsyncSettings
from shoal.jobs.execute import is_binary
from shoal.server.body import NotJson, decode_json
from shoal.server.errors import ApiError, BadRequest, PayloadTooLarge, Unprocessable
from shoal.server.handlers.base import Handler
from shoal.server.codecs.detector import Options as DetectorOptions
from shoal.server.media import MediaBody

MAX_TIMEOUT_S = 3600.0


class UnsupportedMedia(ApiError):
    status, code = 415, "unsupported_media_type"

REFERENCE_KEYS = {"input_location"}


ASYNC_KEYS = ("ttl_s", "timeout_s", "on_success", "on_failure", "notify")
# Per-request model options that ride in the query string with a raw image body, as on the
# synchronous route (the detector's conf, iou, max_det, classes, agnostic).
MODEL_KEYS = tuple(DetectorOptions.model_fields)


@dataclass
class Options:
    ttl_s: float
    timeout_s: float
    on_success: list[str] = field(default_factory=list)
    on_failure: list[str] = field(default_factory=list)
    model_params: dict[str, str] = field(default_factory=dict)


def parse_options(query: Any, s: AsyncSettings) -> Options:
    """``ttl_s``, ``timeout_s``, ``on_success``/``on_failure``/``notify`` (repeatable) from the query string."""
    def number(name: str, default: float, cap: float) -> float:
        raw = query.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise Unprocessable(f"{name}: {raw[:40]!r} is not a number of seconds") from None
        if not math.isfinite(value) or value <= 0 or value > cap:
            raise Unprocessable(f"{name}: must be between 0 and {cap:g} seconds")
        return value

    def urls(*names: str) -> list[str]:
        out: list[str] = []
        for name in names:
            for url in query.getlist(name):
                try:
                    out.append(check_webhook_url(url))
                except UsageError as exc:
                    raise Unprocessable(f"{name}: {exc}") from None
        if len(out) > MAX_TARGETS:
            raise Unprocessable(f"at most {MAX_TARGETS} webhook targets per event")
        return list(dict.fromkeys(out))

    unknown = set(query.keys()) - set(ASYNC_KEYS) - set(MODEL_KEYS)
    if unknown:
        raise BadRequest(f"unknown query parameter {sorted(unknown)[0]!r}: use {', '.join(ASYNC_KEYS)}, or with "
                         f"an image body the detection options {', '.join(MODEL_KEYS)}")
    opts = Options(ttl_s=number("ttl_s", s.async_ttl_s, s.async_retention_s),
                   timeout_s=number("timeout_s", s.async_timeout_s, MAX_TIMEOUT_S),
                   on_success=urls("on_success", "notify"), on_failure=urls("on_failure", "notify"),
                   model_params={k: query[k] for k in MODEL_KEYS if k in query})
    if (opts.on_success or opts.on_failure) and not s.async_webhook_secret:
        raise BadRequest("this server signs webhooks with SHOAL_ASYNC_WEBHOOK_SECRET, which is not set: "
                         "notification targets are refused")
    return opts


def _is_reference(head: bytes) -> bool:
    try:
        body = decode_json(head)
    except NotJson:
        return False
    return isinstance(body, dict) and "input_location" in body


def _options_need_an_image(params: dict[str, str]) -> BadRequest:
    return BadRequest(f"query parameter {sorted(params)[0]!r} goes with an image body (or an image's "
                      "input_location); in a JSON body send detection options as fields")


class Intake:
    """Turns an HTTP body into a stored payload (or a checked reference) and a queued-to-be record."""

    def __init__(self, locations: Locations, settings: AsyncSettings,
                 io: Callable[..., Any]) -> None:
        self.locations = locations
        self.s = settings
        self.io = io  # runs a blocking function off the event loop

    async def accept(self, model_id: str, headers: Mapping[str, str], chunks: AsyncIterator[bytes],
                     opts: Options, handler: Handler | None) -> JobRecord:
        cap = self.s.max_payload_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise BadRequest("Content-Length is not a number")
            if int(declared) > cap:
                raise PayloadTooLarge(f"payload of {declared} bytes exceeds the limit of {cap} bytes")
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            raise UnsupportedMedia("multipart bodies are not queued: send the image itself as the body "
                                   "(Content-Type: image/jpeg) or JSON")
        binary = is_binary(kind)
        job_id = new_job_id()
        key = f"payloads/{job_id}.{'bin' if binary else 'json'}"
        head, more = await _read_head(chunks, min(self.s.validate_bytes, cap))
        inline, size = True, len(head)
        params = opts.model_params
        if params and not binary and (more is not None or not _is_reference(head)):
            raise _options_need_an_image(params)
        if more is not None:
            location, size = await self._stream(key, head, more, cap)
        elif binary:  # the whole body is in hand: check it, with its options
            location = await self._small_binary(key, head, kind, handler, params)
        else:
            location, inline, size = await self._small(key, head, handler)
        if not inline:  # a reference: an image by its name (s3://b/cam/0001.jpg), else JSON
            guessed = mimetypes.guess_type(location)[0] or ""
            binary, kind = (True, guessed) if guessed.startswith("image/") else (False, kind)
            if params and not binary:
                raise _options_need_an_image(params)
        root, now = self.locations.root, time.time()
        return JobRecord(id=job_id, model_id=model_id, input_location=location,
                         output_location=root.location(f"results/{model_id}/{job_id}.json"),
                         failure_location=root.location(f"failures/{model_id}/{job_id}.json"),
                         inline=inline, input_bytes=size, content_type=kind if binary else "application/json",
                         created_at=now, expires_at=now + opts.ttl_s,
                         timeout_s=opts.timeout_s, max_attempts=self.s.async_max_attempts,
                         notify_success=opts.on_success, notify_failure=opts.on_failure,
                         media_params=json.dumps(params) if params and binary else "")

    async def _small_binary(self, key: str, raw: bytes, kind: str, handler: Handler | None,
                            params: dict[str, str]) -> str:
        if not raw:
            raise BadRequest(f"body is empty (0 bytes) for Content-Type {kind}")
        if handler is not None:
            handler.codec.parse(MediaBody(raw, kind, params))  # a text model refuses images here, with its 422
        location: str = await self.io(self.locations.root.put, key, raw)
        return location

    async def _small(self, key: str, raw: bytes, handler: Handler | None) -> tuple[str, bool, int]:
        if not raw.strip():
            raise BadRequest("request body is empty: send the JSON payload, or {\"input_location\": \"s3://...\"}")
        try:
            body = decode_json(raw)
        except NotJson as exc:
            raise BadRequest(f"body {exc}") from None
        if not isinstance(body, dict):  # checked here too: the model may not be loaded to parse it
            raise Unprocessable(f"body must be a JSON object, got {type(body).__name__}")
        if "input_location" in body:
            return await self._reference(body)
        if handler is not None:
            handler.codec.parse(body)  # 422 naming the field, exactly as the synchronous route would
        location = await self.io(self.locations.root.put, key, raw)
        return location, True, len(raw)

    async def _reference(self, body: dict) -> tuple[str, bool, int]:
        extra = set(body) - REFERENCE_KEYS
        if extra:
            raise Unprocessable(f"{sorted(extra)[0]}: not allowed beside input_location (options go in the "
                                "query string)")
        location = body["input_location"]
        if not isinstance(location, str) or not location:
            raise Unprocessable("input_location: must be a non-empty string (s3://bucket/key or file://PATH)")
        try:
            size = await self.io(self.locations.size, location)
        except UsageError as exc:
            raise Unprocessable(str(exc)) from None
        except ShoalError as exc:
            raise BadRequest(f"input_location cannot be read: {str(exc).splitlines()[0]}") from None
        if size > self.s.max_payload_bytes:
            raise PayloadTooLarge(f"input_location holds {size} bytes, over the limit of "
                                  f"{self.s.max_payload_bytes} bytes")
        return location, False, size

    async def _stream(self, key: str, head: bytes, more: AsyncIterator[bytes], cap: int) -> tuple[str, int]:
        writer = await self.io(self.locations.root.writer, key)
        try:
            await self.io(writer.write, head)
            async for chunk in more:
                if writer.size + len(chunk) > cap:
                    raise PayloadTooLarge(f"payload exceeds the limit of {cap} bytes")
                await self.io(writer.write, chunk)
            location: str = await self.io(writer.commit)
        except BaseException:
            await asyncio.shield(self.io(writer.abort))
            raise
        return location, writer.size


async def _read_head(chunks: AsyncIterator[bytes], limit: int) -> tuple[bytes, AsyncIterator[bytes] | None]:
    """Up to ``limit`` bytes; the iterator of the rest, or None when the body ended within the limit."""
    parts: list[bytes] = []
    size = 0
    it = chunks.__aiter__()
    async for chunk in it:
        if not chunk:
            continue
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(parts), it
    return b"".join(parts), None
