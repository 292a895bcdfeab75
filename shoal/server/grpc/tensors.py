"""KServe v2 gRPC messages <-> the transport-free v2 request and tensors (``v2_codec``, ``v2_tensors``).

Inputs arrive as typed ``contents`` (one repeated field per datatype family) or as
``raw_input_contents`` (the same little-endian bytes as Triton's binary tensor data); both
become ``v2_tensors.Tensor`` through the codec HTTP uses, so the checks and the handlers are
the same. Outputs leave as ``raw_output_contents`` when the request came raw (what Triton
and its clients expect) and as typed ``contents`` otherwise (as MLServer does); FP16 and
BF16 have no typed field, so a response holding one goes raw.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tritonclient.grpc import service_pb2 as pb

from shoal.server.errors import BadRequest, Unprocessable
from shoal.server.v2_codec import InferRequest, RequestedOutput, select_outputs
from shoal.server.v2_tensors import DATATYPES, Tensor, from_raw, from_values, to_raw

# datatype -> the InferTensorContents field that carries it typed (FP16 and BF16 only travel raw)
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def parameter_value(p: pb.InferParameter) -> Any:
    """The Python value of one ``InferParameter`` (bool, int, str, float or bytes)."""
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {k: parameter_value(v) for k, v in params.items()}


def request_from_proto(msg: pb.ModelInferRequest) -> InferRequest:
    """The protocol-neutral request; 400/422 naming the input when contents, datatype and shape disagree."""
    if not msg.inputs:
        raise Unprocessable("inputs: at least one input tensor is required")
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs: send every "
                         "input raw or every input in contents")
    inputs = []
    for i, t in enumerate(msg.inputs):
        if raw and t.HasField("contents"):
            raise BadRequest(f"inputs.{t.name}: contents and raw_input_contents together; use one of them")
        params = parameters(t.parameters)
        shape = list(t.shape)
        if raw:
            inputs.append(from_raw(t.name, t.datatype, shape, raw[i], params))
        else:
            inputs.append(from_values(t.name, t.datatype, shape, _typed_values(t), params))
    outputs = [RequestedOutput(o.name) for o in msg.outputs] or None
    return InferRequest(inputs, msg.id or None, parameters(msg.parameters), outputs)


def _typed_values(t: pb.ModelInferRequest.InferInputTensor) -> list[Any]:
    field = CONTENTS.get(t.datatype)
    if field is None:
        if t.datatype in DATATYPES:
            raise Unprocessable(f"inputs.{t.name}: {t.datatype} has no typed contents field: send it in "
                                "raw_input_contents")
        raise Unprocessable(f"inputs.{t.name}: datatype {t.datatype!r} is not a KServe v2 datatype "
                            f"(one of {', '.join(DATATYPES)})")
    others = [f.name for f, _ in t.contents.ListFields() if f.name != field]
    if others:
        raise Unprocessable(f"inputs.{t.name}: {t.datatype} goes in contents.{field}, not {', '.join(others)}")
    return list(getattr(t.contents, field))


def response_to_proto(resp: pb.ModelInferResponse, request: InferRequest, produced: list[Tensor],
                      raw: bool) -> None:
    """Fill ``resp`` with the outputs the request selects, as raw bytes or typed contents."""
    chosen = [t for t, _ in select_outputs(request, produced)]
    raw = raw or any(t.datatype not in CONTENTS for t in chosen)  # a response is all raw or all typed
    for t in chosen:
        out = resp.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        if raw:
            resp.raw_output_contents.append(to_raw(t))
        else:
            values = t.values()
            if t.datatype == "BYTES":
                values = [v if isinstance(v, bytes) else str(v).encode() for v in values]
            getattr(out.contents, CONTENTS[t.datatype]).extend(values)
