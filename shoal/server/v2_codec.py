"""KServe v2 requests and responses <-> typed tensors, with Triton's binary tensor data extension.

Knows no HTTP: it takes the body's bytes and the JSON header's length (HTTP carries that in
``Inference-Header-Content-Length``) and gives back a body and its JSON length, so the gRPC
servicer reuses the same types (``InferRequest``, ``v2_tensors.Tensor``) and output selection.

The extension, as Triton defines it: the body is a JSON header followed by raw tensor bytes.
An input whose ``parameters.binary_data_size`` is set takes that many bytes from the tail, in
input order, instead of ``data``. Outputs are returned as raw bytes when the request says so,
per output (``outputs[].parameters.binary_data``) or for all (``parameters.binary_data_output``);
they then carry ``parameters.binary_data_size`` and their bytes follow the response's JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal.server.errors import BadRequest, Unprocessable
from shoal.server.schemas import V2InferRequest, validate
from shoal.server.v2_tensors import Tensor, from_raw, from_values, to_json_values, to_raw

BINARY_SIZE = "binary_data_size"
# request parameters the protocol (Triton, KServe) reserves; clients such as tritonclient set some of them
RESERVED_PARAMETERS = frozenset({"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start",
                                 "sequence_end", "headers"})


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for; ``binary`` None follows the request's ``binary_data_output``."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True)
class InferRequest:
    """A protocol-neutral infer request: typed inputs, the request's parameters and the outputs wanted."""

    inputs: list[Tensor]
    id: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None  # None: every output of the model

    def input(self, name: str) -> Tensor | None:
        return next((t for t in self.inputs if t.name == name), None)

    @property
    def model_parameters(self) -> dict[str, Any]:
        """The parameters meant for the model: the protocol's own (binary data, priority...) left out."""
        return {k: v for k, v in self.parameters.items() if k not in RESERVED_PARAMETERS}

    @property
    def binary_outputs(self) -> bool:
        return self.parameters.get("binary_data_output") is True


@dataclass(frozen=True)
class EncodedResponse:
    """A response body; ``json_length`` is the JSON header's size when raw tensor bytes follow it."""

    body: bytes
    json_length: int | None

    @property
    def content_type(self) -> str:
        return "application/json" if self.json_length is None else "application/octet-stream"


def parse_json_length(header: str | None, body_size: int) -> int | None:
    """The JSON header's length from its transport field (None: the whole body is JSON); 400 if nonsense."""
    if header is None:
        return None
    try:
        length = int(header)
    except ValueError:
        raise BadRequest("Inference-Header-Content-Length must be a number of bytes") from None
    if not 0 < length <= body_size:
        raise BadRequest(f"Inference-Header-Content-Length is {length} but the body has {body_size} bytes")
    return length


def decode_request(body: bytes, json_length: int | None) -> InferRequest:
    """An ``InferRequest`` from a v2 body: JSON, or JSON header + binary tensor data."""
    head = body if json_length is None else body[:json_length]
    try:
        document = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        hint = "" if json_length is not None else " (binary tensor data needs the header's length in " \
                                                   "Inference-Header-Content-Length)"
        raise BadRequest(f"body is not valid JSON: {getattr(exc, 'msg', 'not UTF-8')}{hint}") from None
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    return request_from_json(document, b"" if json_length is None else body[json_length:])


def request_from_json(document: Any, tail: bytes = b"") -> InferRequest:
    """An ``InferRequest`` from a parsed JSON header and the raw bytes after it."""
    req = validate(V2InferRequest, document)
    inputs, at = [], 0
    view = memoryview(tail)
    for t in req.inputs:
        params = t.parameters or {}
        size = params.get(BINARY_SIZE)
        if size is None:
            if t.data is None:
                raise Unprocessable(f"inputs.{t.name}: give data, or parameters.binary_data_size with the bytes "
                                    "after the JSON header")
            inputs.append(from_values(t.name, t.datatype, t.shape, t.data, params))
            continue
        if t.data is not None:
            raise Unprocessable(f"inputs.{t.name}: give either data or parameters.binary_data_size, not both")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise Unprocessable(f"inputs.{t.name}: parameters.binary_data_size must be a non-negative integer")
        if at + size > len(tail):
            raise BadRequest(f"inputs.{t.name}: binary_data_size {size} runs past the {len(tail)} bytes of binary "
                             "data after the JSON header")
        inputs.append(from_raw(t.name, t.datatype, t.shape, bytes(view[at:at + size]), params))
        at += size
    if at != len(tail):
        raise BadRequest(f"{len(tail) - at} bytes after the JSON header belong to no input (sum of "
                         "binary_data_size is less than the binary data)")
    outputs = None
    if req.outputs is not None:
        outputs = [_requested(o.name, o.parameters or {}) for o in req.outputs]
    return InferRequest(inputs, req.id, req.parameters or {}, outputs)


def _requested(name: str, params: Mapping[str, Any]) -> RequestedOutput:
    if params.get("classification"):
        raise BadRequest(f"outputs.{name}: the classification extension is not supported; classifiers already "
                         "return their label and scores")
    binary = params.get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise Unprocessable(f"outputs.{name}: parameters.binary_data must be true or false")
    return RequestedOutput(name, binary)


def check_outputs(request: InferRequest, available: Sequence[str]) -> None:
    """400 before any work if the request names an output the model does not have."""
    for out in request.outputs or []:
        if out.name not in available:
            raise BadRequest(f"outputs.{out.name}: no such output; this model has {', '.join(available)}")


def select_outputs(request: InferRequest, produced: list[Tensor]) -> list[tuple[Tensor, bool]]:
    """The outputs to return, in the requested order, each with whether it goes as binary data."""
    if request.outputs is None:
        return [(t, request.binary_outputs) for t in produced]
    by_name = {t.name: t for t in produced}
    return [(by_name[o.name], request.binary_outputs if o.binary is None else o.binary)
            for o in request.outputs if o.name in by_name]


def encode_response(header: dict[str, Any], request: InferRequest, produced: list[Tensor]) -> EncodedResponse:
    """``header`` (model_name, id, parameters...) plus the selected outputs, JSON or JSON + binary data."""
    outputs, tail = [], []
    for t, binary in select_outputs(request, produced):
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if binary:
            raw = to_raw(t)
            entry["parameters"] = {BINARY_SIZE: len(raw)}
            tail.append(raw)
        else:
            entry["data"] = to_json_values(t)
        outputs.append(entry)
    text = json.dumps({**header, "outputs": outputs}).encode()
    if not tail:
        return EncodedResponse(text, None)
    return EncodedResponse(text + b"".join(tail), len(text))
