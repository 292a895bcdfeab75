"""The detector kind's protocol: images as raw bodies, multipart parts, base64 JSON or v2 BYTES, plus options.

Results come from ``shoal.server.handlers.detector`` as dicts of boxes, scores and classes; the v2
output is one FP32 [N, 7] tensor over all images.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shoal.server.codecs.base import Codec, Parsed
from shoal.server.errors import Unprocessable
from shoal.server.media import MediaBody
from shoal.server.schemas import MAX_INPUTS, validate
from shoal.server.v2_codec import InferRequest
from shoal.server.v2_tensors import Tensor, tensor
from shoal.store.manifest import Manifest
from shoal.vision.postprocess import DetectOptions


class Options(BaseModel):
    """Per-request detection options (JSON fields, query parameters or multipart form fields)."""

    model_config = ConfigDict(extra="forbid")

    conf: float | None = Field(None, ge=0.0, le=1.0, description="confidence threshold (default 0.25)")
    iou: float | None = Field(None, ge=0.0, le=1.0, description="NMS IoU threshold (default 0.7)")
    max_det: int | None = Field(None, ge=1, le=1000, description="most boxes per image (default 300)")
    classes: list[int] | None = Field(None, description="keep only these class indices")
    agnostic: bool | None = Field(None, description="NMS across classes")

    def resolve(self, base: DetectOptions) -> DetectOptions:
        return DetectOptions(conf=base.conf if self.conf is None else self.conf,
                             iou=base.iou if self.iou is None else self.iou,
                             max_det=base.max_det if self.max_det is None else self.max_det,
                             agnostic=base.agnostic if self.agnostic is None else self.agnostic,
                             classes=base.classes if self.classes is None else tuple(self.classes))


class ImageRequest(Options):
    image: str = Field(description="the image file (JPEG, PNG, ...) in base64, or a data: URL")


class ImageBatchRequest(Options):
    inputs: list[ImageRequest] = Field(min_length=1, max_length=MAX_INPUTS)


@dataclass
class ImageInput:
    data: bytes
    opts: DetectOptions


class DetectorCodec(Codec):
    """Every request carries images and optional detection options over the model's defaults."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        self.defaults = DetectOptions()

    def parse(self, body: Any) -> Parsed:
        if isinstance(body, MediaBody):
            return Parsed([ImageInput(body.data, self._options(body.params))], single=True)
        if isinstance(body, dict) and "inputs" in body:
            batch = validate(ImageBatchRequest, body)
            shared = Options.model_validate(batch.model_dump(exclude={"inputs"}, exclude_none=True))
            items = []
            for i, item in enumerate(batch.inputs):
                opts = item.resolve(shared.resolve(self.defaults))
                items.append(ImageInput(_b64(item.image, f"inputs.{i}.image"), opts))
            return Parsed(items, single=False)
        if not isinstance(body, dict):
            raise Unprocessable("body: send an image (image/jpeg, image/png, multipart) or JSON {\"image\": base64}")
        req = validate(ImageRequest, body)
        return Parsed([ImageInput(_b64(req.image, "image"), req.resolve(self.defaults))], single=True)

    def _options(self, params: Mapping[str, str]) -> DetectOptions:
        values: dict[str, Any] = {}
        for key, text in params.items():
            if key == "classes":
                values[key] = [c for c in text.replace(" ", "").split(",") if c]
            else:
                values[key] = text
        return validate(Options, values).resolve(self.defaults)

    def parse_v2(self, request: InferRequest) -> list[Any]:
        """BYTES elements are image files: JSON strings in base64, raw bytes (binary data, gRPC) as they are."""
        t = request.input("image") or request.inputs[0]
        if t.datatype != "BYTES":
            raise Unprocessable("inputs: a BYTES tensor named 'image' holding image files is required")
        images = t.values()
        if not images or len(images) > MAX_INPUTS:
            raise Unprocessable(f"inputs.{t.name}: between 1 and {MAX_INPUTS} images per request")
        opts = validate(Options, dict(request.model_parameters)).resolve(self.defaults)
        return [ImageInput(_b64(v, f"inputs.{t.name}[{i}]") if isinstance(v, str) else _nonempty(v, t.name, i), opts)
                for i, v in enumerate(images)]

    def to_v2(self, results: list[Any]) -> list[Tensor]:
        """One FP32 [N, 7] tensor over all images: image index, x1, y1, x2, y2, score, class."""
        rows = [[i, *box, score, cls] for i, r in enumerate(results)
                for box, score, cls in zip(r["boxes"], r["scores"], r["classes"])]
        return [tensor("detections", "FP32", rows, (len(rows), 7))]

    @classmethod
    def v2_metadata(cls, manifest: Manifest) -> dict[str, Any]:
        """KServe v2 tensors, from the manifest alone."""
        return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "detections", "datatype": "FP32", "shape": [-1, 7]}]}


def _nonempty(data: bytes, name: str, index: int) -> bytes:
    if not data:
        raise Unprocessable(f"inputs.{name}[{index}]: image is empty (0 bytes)")
    return data


def _b64(text: str, where: str) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Unprocessable(f"{where}: not valid base64") from None
    if not data:
        raise Unprocessable(f"{where}: image is empty (0 bytes)")
    return data
