"""Object detectors (YOLOv8 TorchScript exports): image in, boxes + classes + scores out.

preprocess = decode + letterbox (executor thread), infer = one forward over the batch
[B, 3, S, S], postprocess = confidence filter + class-aware NMS + boxes back to the
original image's pixels. No Ultralytics, OpenCV or torchvision needed here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from shoal.artifacts import load_torchscript
from shoal.server.codecs.detector import DetectorCodec, ImageInput, Options  # noqa: F401 (Options re-exported)
from shoal.server.errors import ApiError, PayloadTooLarge, Unprocessable
from shoal.server.handlers.base import Handler, LoadContext
from shoal.store.manifest import Manifest
from shoal.vision.image import DEFAULT_MAX_PIXELS, ImageError, ImageTooLarge, decode_image
from shoal.vision.letterbox import Geometry, letterbox
from shoal.vision.postprocess import DetectOptions, Detections, postprocess

DEFAULT_SIZE = 640


@dataclass
class Batch:
    tensor: torch.Tensor | None  # [n_ok, 3, S, S]
    rows: list[int]  # input index of each tensor row
    geometries: list[Geometry]
    failures: dict[int, ApiError] = field(default_factory=dict)


CODEC = DetectorCodec


def create(manifest: Manifest, folder: Path, ctx: LoadContext) -> "DetectorHandler":
    return DetectorHandler(manifest, folder, ctx)


class DetectorHandler(Handler):
    """Decode and letterbox each image, one forward per batch, then NMS and boxes back in image pixels."""

    codec_class = DetectorCodec

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
