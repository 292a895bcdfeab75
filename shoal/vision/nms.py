"""Class-aware non-maximum suppression in plain torch; torchvision's kernel when it imports.

Greedy NMS keeps the best-scoring box and drops every later box whose IoU with it is
*greater* than the threshold; class awareness comes from offsetting each class's boxes
by ``class x MAX_WH`` so boxes of different classes never overlap (Ultralytics' trick).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

MAX_WH = 7680  # larger than any letterboxed input side: class offsets never overlap

Kernel = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def box_iou_one(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of one xyxy box [4] against many [N, 4]."""
    x1 = torch.maximum(box[0], boxes[:, 0])
    y1 = torch.maximum(box[1], boxes[:, 1])
    x2 = torch.minimum(box[2], boxes[:, 2])
    y2 = torch.minimum(box[3], boxes[:, 3])
    inter = (x2 - x1).clamp_(min=0) * (y2 - y1).clamp_(min=0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def nms_torch(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
              max_keep: int | None = None) -> torch.Tensor:
    """Indices of the kept boxes, best first; one vectorised IoU row per kept box (kept <= max_keep)."""
    order = torch.argsort(scores, descending=True)
    keep: list[int] = []
    remaining = order
    while remaining.numel():
        best = int(remaining[0])
        keep.append(best)
        if max_keep is not None and len(keep) >= max_keep:
            break
        rest = remaining[1:]
        if not rest.numel():
            break
        remaining = rest[box_iou_one(boxes[best], boxes[rest]) <= iou_threshold]
    return torch.tensor(keep, dtype=torch.int64)


@functools.lru_cache(maxsize=1)
def torchvision_kernel() -> Kernel | None:
    """torchvision.ops.nms if torchvision imports beside this torch; None otherwise (the usual case here)."""
    try:
        from torchvision.ops import nms
    except Exception:  # not installed, or built for another torch (ImportError, RuntimeError, OSError)
        return None
    return nms  # type: ignore[no-any-return]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float,
                max_keep: int, agnostic: bool = False, use_torchvision: bool = True) -> torch.Tensor:
    """Class-aware NMS; returns at most ``max_keep`` indices, best score first."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    offset = boxes if agnostic else boxes + classes.to(boxes.dtype)[:, None] * MAX_WH
    kernel = torchvision_kernel() if use_torchvision else None
    if kernel is not None:
        return kernel(offset, scores, iou_threshold)[:max_keep]
    return nms_torch(offset, scores, iou_threshold, max_keep)
