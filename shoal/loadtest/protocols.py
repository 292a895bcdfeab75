"""The same load over three protocols: native JSON, KServe v2 over HTTP, KServe v2 over gRPC.

Why one payload pool for all three: a comparison is only fair when every protocol carries the
same inputs. Bodies are written once in the native shape (``{"text"}``, ``{"inputs"}``,
``{"question", "context"}``) and re-encoded per protocol before the run, so the hot loop
never converts anything. gRPC requests are serialized ``ModelInferRequest`` bytes with raw
tensor contents (as Triton's client sends them); the model name is a separately serialized
field prepended at send time (protobuf messages concatenate), so thousands of models need
no per-model copy of the pool.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from shoal.errors import UsageError

PROTOCOLS = ("native", "v2", "grpc")
PATHS = {"native": "/predictions/{model}", "v2": "/v2/models/{model}/infer", "grpc": "{model}"}


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol {protocol!r}: use native, v2 or grpc")
    return protocol


def v2_tensors(body: dict[str, Any]) -> list[dict[str, Any]]:
    """KServe v2 input tensors for a native body (a v2 body's own ``inputs`` pass through)."""
    inputs = body.get("inputs")
    if isinstance(inputs, list) and inputs and all(isinstance(t, dict) and "datatype" in t for t in inputs):
        return inputs  # already v2
    if isinstance(inputs, list) and inputs and all(isinstance(x, dict) for x in inputs):  # QA batch
        columns = {"question": [x.get("question", "") for x in inputs],
                   "context": [x.get("context", "") for x in inputs]}
    elif isinstance(inputs, list):
        columns = {"text": [str(x) for x in inputs]}
    elif "question" in body:
        columns = {"question": [body["question"]], "context": [body.get("context", "")]}
    elif "text" in body:
        columns = {"text": [body["text"]]}
    else:
        raise UsageError(f"payload body {json.dumps(body)[:80]} has no text, inputs or question to send as a "
                         "KServe v2 tensor")
    return [{"name": name, "shape": [len(values)], "datatype": "BYTES", "data": values}
            for name, values in columns.items()]


def v2_json(native: bytes) -> bytes:
    return json.dumps({"inputs": v2_tensors(json.loads(native))}).encode()


def grpc_inputs(native: bytes) -> bytes:
    """A serialized ``ModelInferRequest`` holding only the inputs (and their raw contents)."""
    return grpc_request(v2_tensors(json.loads(native)))


def image_tensor(image: bytes, protocol: str) -> dict[str, Any]:
    """A detector's ``image`` input: the file base64 in v2 JSON, its own bytes in gRPC's raw contents."""
    value: str | bytes = base64.b64encode(image).decode() if protocol == "v2" else image
    return {"name": "image", "shape": [1], "datatype": "BYTES", "data": [value]}


def grpc_request(tensors: list[dict[str, Any]]) -> bytes:
    """Tensors as a serialized ``ModelInferRequest`` (no model name: prepended at send time)."""
    import numpy as np
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.utils import serialize_byte_tensor, triton_to_np_dtype

    req = pb.ModelInferRequest()
    for t in tensors:
        req.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        if t["datatype"] == "BYTES":
            values = [v.encode() if isinstance(v, str) else v for v in t["data"]]
            raw = serialize_byte_tensor(np.array(values, dtype=object)).item()
        else:
            raw = np.asarray(t["data"], dtype=triton_to_np_dtype(t["datatype"])).tobytes()
        req.raw_input_contents.append(raw)
    return req.SerializeToString()  # type: ignore[no-any-return]


def grpc_model_prefix(model: str) -> bytes:
    """The serialized ``model_name`` field: prepended to a pool body it makes the whole request."""
    from tritonclient.grpc import service_pb2 as pb

    return pb.ModelInferRequest(model_name=model).SerializeToString()  # type: ignore[no-any-return]


def encode(protocol: str, bodies: list[bytes], content_type: str = "application/json") -> list[bytes]:
    """The native pool in ``protocol``'s encoding; raw image files (``image/*``) become an ``image`` tensor."""
    if protocol == "native":
        return bodies
    if content_type.startswith("image/"):
        tensors = [[image_tensor(b, protocol)] for b in bodies]
        return [json.dumps({"inputs": t}).encode() if protocol == "v2" else grpc_request(t) for t in tensors]
    return [v2_json(b) if protocol == "v2" else grpc_inputs(b) for b in bodies]
