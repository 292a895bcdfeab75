"""Run one job's payload through the server's own data plane: ``Runtime.infer`` (registry -> batcher
-> executor), the very path of synchronous requests, so async jobs batch together with them and
share the device fairly; only the deadline is the job's invocation timeout.
"""

from __future__ import annotations

import json
from typing import Any

from shoal.server.body import NotJson, decode_json
from shoal.server.media import RAW_TYPES, MediaBody
from shoal.server.runtime import Runtime


async def execute(rt: Runtime, model_id: str, body: Any, timeout_s: float) -> tuple[bool, str]:
    """(single, JSON text of the prediction or predictions); raises the server's ApiErrors."""
    out = await rt.infer(model_id, body, timeout_s=timeout_s)
    text = out.json if out.json is not None else json.dumps(out.results[0] if out.single else out.results)
    return out.single, text


def result_bytes(job_id: str, model_id: str, single: bool, text: str) -> bytes:
    """The result object: the native response's shape, plus the job id."""
    key = "prediction" if single else "predictions"
    return f'{{"job_id":"{job_id}","model_id":{json.dumps(model_id)},"{key}":{text}}}'.encode()


def is_binary(content_type: str) -> bool:
    """Raw bytes (an image for a detector) rather than JSON: the synchronous route's rule."""
    return content_type.startswith("image/") or content_type in RAW_TYPES


def parse_payload(raw: bytes, content_type: str = "application/json", media_params: str = "") -> Any:
    """What the handler takes: parsed JSON, or a MediaBody of raw bytes (with its query options);
    ValueError with the reason."""
    if is_binary(content_type):
        return MediaBody(raw, content_type, json.loads(media_params) if media_params else {})
    try:
        return decode_json(raw)
    except NotJson as exc:
        raise ValueError(f"payload {exc}") from None
