"""Object detectors (YOLOv8 TorchScript exports): image in, boxes + classes + scores out.

preprocess = decode + letterbox (executor thread), infer = one forward over the batch
[B, 3, S, S], postprocess = confidence filter + class-aware NMS + boxes back to the
original image's pixels. No Ultralytics, OpenCV or torchvision needed here.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from shoal.artifacts import load_torchscript
from shoal.server.errors import ApiError, PayloadTooLarge, Unprocessable
from shoal.server.handlers.base import Handler, LoadContext, Parsed
from shoal.server.media import MediaBody
from shoal.server.schemas import MAX_INPUTS, validate
from shoal.server.v2_codec import InferRequest
from shoal.server.v2_tensors import Tensor, tensor
from shoal.store.manifest import Manifest
from shoal.vision.image import DEFAULT_MAX_PIXELS, ImageError, ImageTooLarge, decode_image
from shoal.vision.letterbox import Geometry, letterbox
from shoal.vision.postprocess import DetectOptions, Detections, postprocess

DEFAULT_SIZE = 640


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


@dataclass
class Batch:
    tensor: torch.Tensor | None  # [n_ok, 3, S, S]
    rows: list[int]  # input index of each tensor row
    geometries: list[Geometry]
    failures: dict[int, ApiError] = field(default_factory=dict)


def create(manifest: Manifest, folder: Path, ctx: LoadContext) -> "DetectorHandler":
    return DetectorHandler(manifest, folder, ctx)


class DetectorHandler(Handler):
    def __init__(self, manifest: Manifest, folder: Path, ctx: LoadContext) -> None:
        super().__init__(manifest, folder, ctx)
        if manifest.processor == "gpu" and ctx.device_kind != "cuda":
            raise RuntimeError(f"artifact traced for gpu; this server runs on {ctx.device_kind}")
        if manifest.format != "torchscript":
            raise RuntimeError(f"detector artifacts must be TorchScript, not {manifest.format}")
        self.size = manifest.image_size or DEFAULT_SIZE
        self.names = manifest.labels
        self.defaults = DetectOptions()
        self.max_pixels = DEFAULT_MAX_PIXELS
        self.module = load_torchscript(folder / manifest.artifact, ctx.torch_device)  # never a pickle

    # -- request side (event loop: validation and base64 only) --
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

    def v2_metadata(self) -> dict[str, Any]:
        return v2_metadata(self.manifest)

    def sample_inputs(self) -> list[Any]:
        buf = io.BytesIO()
        Image.new("RGB", (96, 64), (90, 120, 150)).save(buf, format="PNG")
        return [ImageInput(buf.getvalue(), self.defaults)]

    # -- batch side (executor thread) --
    def preprocess(self, inputs: list[Any]) -> Batch:
        rows, tensors, geometries = [], [], []
        failures: dict[int, ApiError] = {}
        for i, item in enumerate(inputs):
            try:
                image = decode_image(item.data, self.max_pixels)
            except ImageTooLarge as exc:
                failures[i] = PayloadTooLarge(str(exc))
                continue
            except ImageError as exc:
                failures[i] = Unprocessable(str(exc))
                continue
            except Exception as exc:  # an odd file Pillow trips over must not fail its batch-mates
                failures[i] = Unprocessable(f"image cannot be decoded: {type(exc).__name__}: {exc}")
                continue
            chw, geo = letterbox(image, self.size)
            rows.append(i)
            tensors.append(chw)
            geometries.append(geo)
        return Batch(torch.stack(tensors) if tensors else None, rows, geometries, failures)

    def infer(self, batch: Batch) -> torch.Tensor | None:
        if batch.tensor is None:
            return None
        with torch.inference_mode():
            out = self.module(batch.tensor.to(self.ctx.torch_device))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().cpu()

    def postprocess(self, outputs: Any, batch: Batch, inputs: list[Any]) -> list[Any]:
        results: list[Any] = [None] * len(inputs)
        if outputs is not None:
            options = [inputs[i].opts for i in batch.rows]
            for row, geo, det in zip(batch.rows, batch.geometries, postprocess(outputs, batch.geometries, options)):
                results[row] = _result(det, geo, self.names)
        for i, err in batch.failures.items():
            results[i] = err
        return results

    def close(self) -> None:
        self.module = None


def _result(det: Detections, geo: Geometry, names: list[str] | None) -> dict[str, Any]:
    return {**det.to_json(names), "width": geo.width, "height": geo.height}


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


def v2_metadata(manifest: Manifest) -> dict[str, Any]:
    """KServe v2 tensors, from the manifest alone."""
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "detections", "datatype": "FP32", "shape": [-1, 7]}]}
