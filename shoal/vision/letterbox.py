"""Letterbox: resize keeping the aspect ratio, pad to a square with grey 114, like Ultralytics' ``LetterBox``.

The geometry (rounding of the resized size and of the padding) is Ultralytics' own,
so boxes scaled back with :func:`scale_boxes` land on the same pixels as theirs; the
resize reproduces OpenCV's ``INTER_LINEAR`` (see :mod:`shoal.vision.resize`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shoal.vision.resize import resize_bilinear

PAD_VALUE = 114


@dataclass(frozen=True)
class Geometry:
    """Where an image of ``height`` x ``width`` lands inside the ``size`` x ``size`` input."""

    height: int
    width: int
    size: int
    ratio: float
    new_height: int
    new_width: int
    top: int
    left: int

    @classmethod
    def of(cls, height: int, width: int, size: int) -> "Geometry":
        ratio = min(size / height, size / width)
        new_w, new_h = max(int(round(width * ratio)), 1), max(int(round(height * ratio)), 1)  # thin images: >= 1 px
        dw, dh = (size - new_w) / 2, (size - new_h) / 2
        return cls(height, width, size, ratio, new_h, new_w, int(round(dh - 0.1)), int(round(dw - 0.1)))


def letterbox(image: np.ndarray, size: int) -> tuple[torch.Tensor, Geometry]:
    """RGB uint8 [H, W, 3] -> float32 [3, size, size] in [0, 1], and where the image went."""
    geo = Geometry.of(image.shape[0], image.shape[1], size)
    hwc = torch.from_numpy(image if image.flags.writeable else image.copy())
    if (geo.new_height, geo.new_width) != (geo.height, geo.width):
        hwc = resize_bilinear(hwc, geo.new_height, geo.new_width)
    out = torch.full((3, size, size), float(PAD_VALUE), dtype=torch.float32)
    out[:, geo.top:geo.top + geo.new_height, geo.left:geo.left + geo.new_width] = hwc.permute(2, 0, 1)
    return out.div_(255.0), geo


def scale_boxes(boxes: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """xyxy boxes in letterboxed pixels -> original image pixels, clipped to the image.

    Each axis uses its own gain (resized side / original side), since the resized sides were rounded.
    """
    out = boxes.clone()
    out[:, [0, 2]] = (out[:, [0, 2]] - geo.left) / (geo.new_width / geo.width)
    out[:, [1, 3]] = (out[:, [1, 3]] - geo.top) / (geo.new_height / geo.height)
    out[:, [0, 2]] = out[:, [0, 2]].clamp(0, geo.width)
    out[:, [1, 3]] = out[:, [1, 3]].clamp(0, geo.height)
    return out
