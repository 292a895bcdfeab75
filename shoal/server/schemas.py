"""Request and response shapes: validation with field-naming errors, and the OpenAPI at /docs.

Bodies are parsed by hand (``body.read_json``) for speed and size caps, then
checked against these models, so a wrong type answers 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shoal.server.errors import Unprocessable

MAX_INPUTS = 256


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextRequest(_Strict):
    text: str = Field(description="one text to classify or embed")
    text_pair: str | None = Field(None, description="optional second sequence (sentence-pair models)")


class TextBatchRequest(_Strict):
    inputs: list[str] = Field(min_length=1, max_length=MAX_INPUTS, description="a client-side batch of texts")


class QARequest(_Strict):
    question: str
    context: str


class QABatchRequest(_Strict):
    inputs: list[QARequest] = Field(min_length=1, max_length=MAX_INPUTS)


class Timings(BaseModel):
    queue_ms: float
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float
    total_ms: float
    load_wait_ms: float | None = Field(None, description="present when the request waited for its model to be "
                                       "swapped in")


class PredictionResponse(BaseModel):
    model_id: str
    prediction: Any | None = Field(None, description="single input: the prediction")
    predictions: list[Any] | None = Field(None, description="`inputs` batch: one prediction per input")
    timings: Timings


V2_DATATYPES = ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                "FP64", "BF16", "BYTES")


class _StrictTypes(_Strict):
    """No coercion either ("3" is not a dimension): the v2 protocol's JSON is typed."""

    model_config = ConfigDict(extra="forbid", strict=True)


class V2Tensor(_StrictTypes):
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: Literal[V2_DATATYPES]  # type: ignore[valid-type]
    data: list[Any] | None = Field(None, description="row-major elements (flat or nested); absent when "
                                   "parameters.binary_data_size says the bytes follow the JSON header")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: bytes of this input in the "
                                              "binary data after the JSON (Triton's binary tensor data extension)")


class V2RequestedOutput(_StrictTypes):
    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data: true to get this output as raw "
                                              "bytes after the JSON header")


class V2InferRequest(_StrictTypes):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="binary_data_output: true to get every output "
                                              "as raw bytes after the JSON header")
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = None


class ModelInfo(BaseModel):
    id: str
    state: str
    kind: str | None = None
    task: str | None = None
    precision: str | None = None
    bytes: int = 0
    last_used: float | None = Field(None, description="unix time of the last request")
    load_ms: float | None = None
    loads: int = 0
    inflight: int = 0
    reason: str | None = None
    family: str | None = Field(None, description="short family key (shoal/family/keys.py); null: no family")
    own_bytes: int | None = Field(None, description="weight bytes the model brings itself (its head, vectors, "
                                  "LoRA factors); all of them without a family")
    shared_bytes: int | None = Field(None, description="weight bytes it shares with its family, held once")


class FamilyInfo(BaseModel):
    family: str = Field(description="short family key")
    members: int = Field(description="models of this server in the family")
    shared_bytes: int = Field(description="bytes the members share, counted once in total_bytes")


class ModelList(BaseModel):
    models: list[ModelInfo]
    resident_bytes: int
    budget_bytes: int
    total_bytes: int = Field(0, description="weight bytes of every listed model, each family's shared bytes once")
    own_bytes: int = Field(0, description="sum of the models' own bytes")
    shared_bytes: int = Field(0, description="sum of the families' shared bytes, once per family")
    families: list[FamilyInfo] = Field(default_factory=list)


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: Any) -> M:
    """``model`` built from ``data``, or 422 naming the first bad field."""
    if not isinstance(data, dict):
        kind = getattr(data, "content_type", None)  # a MediaBody (image bytes) sent to a JSON-only model
        raise Unprocessable(f"body must be a JSON object, got {f'{kind} bytes' if kind else type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        raise Unprocessable(f"{loc}: {err['msg']}") from None


def body_schema(*models: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body is read by hand: documents the accepted shapes."""
    schemas = [_inline(m.model_json_schema()) for m in models]
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": schemas}}}}}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace local ``$defs`` references so the schema stands alone inside the OpenAPI document."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)
