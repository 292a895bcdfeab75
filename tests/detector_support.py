"""A tiny YOLO-shaped detector built in plain torch, and test images drawn with Pillow.

The tiny graph has the exported YOLOv8 output layout ([B, 4 + classes, anchors]: centre
x/y, width, height in input pixels, then sigmoid class scores), so the server's detector
path runs for real without Ultralytics (whose venv only the acceptance test needs).
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from shoal.store.base import ModelStore
from shoal.store.manifest import Batching, Manifest, Profile, describe_files

CLASSES = ["person", "car", "dog"]
SIZE = 320  # input side: small and fast


class TinyDetector(torch.nn.Module):
    """Three strided convs to a 1/16 grid; each cell predicts one box around its centre and class scores."""

    def __init__(self, classes: int, stride: int = 16) -> None:
        super().__init__()
        self.stride = stride
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(16, 4 + classes, 3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        b, c, h, w = y.shape
        gy, gx = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
        cx = (gx.reshape(-1) + 0.5 + torch.tanh(y[:, 0].reshape(b, -1))) * self.stride
        cy = (gy.reshape(-1) + 0.5 + torch.tanh(y[:, 1].reshape(b, -1))) * self.stride
        wh = torch.sigmoid(y[:, 2:4].reshape(b, 2, -1)) * 6 * self.stride
        scores = torch.sigmoid(y[:, 4:].reshape(b, c - 4, -1) * 3)
        return torch.cat([cx[:, None], cy[:, None], wh, scores], dim=1)


def make_tiny_detector(store: ModelStore, model_id: str, folder: Path, seed: int = 0) -> Manifest:
    """Trace the tiny detector and push it with a detector manifest (as the trace stage would)."""
    torch.manual_seed(seed)
    model = TinyDetector(len(CLASSES)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        traced = torch.jit.trace(model, torch.rand(1, 3, SIZE, SIZE))
    torch.jit.save(torch.jit.freeze(traced), str(folder / "model.pt"))
    profile = Profile(param_bytes=sum(p.numel() for p in model.parameters()) * 4,
                      artifact_bytes=(folder / "model.pt").stat().st_size, resident_bytes=1 << 20,
                      latency_ms_p50={1: 1.0, 4: 3.0}, threads=1)
    manifest = Manifest(id=model_id, kind="detector", task="detection", image_size=SIZE, labels=CLASSES,
                        tokenizer=None, files=describe_files(folder, ["model.pt"]), profile=profile,
                        batching=Batching(max_batch_size=4, max_delay_ms=2.0), source="tests:tiny-detector")
    store.push(folder, manifest)
    return manifest


def scene(width: int = 800, height: int = 600, seed: int = 0, shapes: int = 14) -> Image.Image:
    """A synthetic camera frame: coloured rectangles and ellipses with white outlines on green."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), (40, 90, 60))
    draw = ImageDraw.Draw(image)
    for i in range(shapes):
        x, y = rng.randint(0, max(0, width - 20)), rng.randint(0, max(0, height - 20))
        w, h = rng.randint(3, max(4, width // 3)), rng.randint(3, max(4, height // 3))
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        (draw.ellipse if i % 2 else draw.rectangle)([x, y, x + w, y + h], fill=colour, outline=(255, 255, 255),
                                                    width=3)
    return image


def encode(image: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    if union <= 0:  # two zero-area boxes (clipped to the image edge): equal or not
        return 1.0 if max(abs(x - y) for x, y in zip(a, b)) < 0.05 else 0.0
    return inter / union


def unmatched(ours: dict, theirs: dict, min_iou: float) -> list[str]:
    """Boxes of ``theirs`` with no box of the same class in ``ours`` at IoU >= min_iou (and vice versa)."""
    problems = []
    for a, b, name in ((theirs, ours, "reference"), (ours, theirs, "served")):
        for box, cls in zip(a["boxes"], a["classes"]):
            best = max((iou(box, o) for o, oc in zip(b["boxes"], b["classes"]) if oc == cls), default=0.0)
            if best < min_iou:
                problems.append(f"{name} box {box} class {cls}: best IoU {best:.4f}")
    return problems
