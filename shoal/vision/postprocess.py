"""YOLOv8 raw output -> detections: confidence filter, class-aware NMS, boxes back in image pixels.

The exported graph returns [B, 4 + classes, anchors]: centre-x, centre-y, width, height
in letterboxed input pixels, then one sigmoid score per class. This follows Ultralytics'
``non_max_suppression`` for single-label detection (the ``predict()`` default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.vision.letterbox import Geometry, scale_boxes
from shoal.vision.nms import batched_nms

MAX_NMS = 30000  # candidates kept (by score) before NMS, as Ultralytics does


@dataclass(frozen=True)
class DetectOptions:
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    agnostic: bool = False
    classes: tuple[int, ...] | None = None


@dataclass
class Detections:
    boxes: torch.Tensor  # [N, 4] xyxy, original image pixels
    scores: torch.Tensor  # [N]
    classes: torch.Tensor  # [N] int64

    def to_json(self, names: list[str] | None) -> dict:
        cls = self.classes.tolist()
        label = (lambda c: names[c] if names and 0 <= c < len(names) else str(c))
        return {"boxes": [[round(v, 2) for v in box] for box in self.boxes.tolist()],
                "classes": cls, "names": [label(c) for c in cls],
                "scores": [round(s, 5) for s in self.scores.tolist()]}


def xywh_to_xyxy(xywh: torch.Tensor) -> torch.Tensor:
    xy, wh = xywh[:, :2], xywh[:, 2:4] / 2
    return torch.cat((xy - wh, xy + wh), dim=1)


def detect_one(pred: torch.Tensor, opts: DetectOptions) -> Detections:
    """One image's raw output [4 + classes, anchors] -> detections in letterboxed pixels."""
    pred = pred.float()
    scores_all = pred[4:]
    candidates = scores_all.amax(0) > opts.conf
    x = pred[:, candidates].T  # [n, 4 + classes]
    conf, cls = x[:, 4:].max(1)
    keep = conf > opts.conf
    boxes, conf, cls = xywh_to_xyxy(x[keep, :4]), conf[keep], cls[keep]
    if opts.classes is not None:
        wanted = torch.isin(cls, torch.tensor(opts.classes, dtype=cls.dtype))
        boxes, conf, cls = boxes[wanted], conf[wanted], cls[wanted]
    if conf.numel() > MAX_NMS:
        top = conf.argsort(descending=True)[:MAX_NMS]
        boxes, conf, cls = boxes[top], conf[top], cls[top]
    idx = batched_nms(boxes, conf, cls, opts.iou, opts.max_det, agnostic=opts.agnostic)
    return Detections(boxes[idx], conf[idx], cls[idx])


def postprocess(preds: torch.Tensor, geometries: list[Geometry], options: list[DetectOptions]) -> list[Detections]:
    """A batch's raw output -> one Detections per image (each with its own options), in its own pixels."""
    out = []
    for pred, geo, opts in zip(preds, geometries, options):
        det = detect_one(pred, opts)
        out.append(Detections(scale_boxes(det.boxes, geo), det.scores, det.classes))
    return out
