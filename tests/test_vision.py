"""shoal.vision: decoding with clear errors, letterbox geometry, the OpenCV-exact resize, NMS, postprocess."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from shoal.vision.image import ImageError, ImageTooLarge, decode_image
from shoal.vision.letterbox import PAD_VALUE, Geometry, letterbox, scale_boxes
from shoal.vision.nms import batched_nms, box_iou_one, nms_torch
from shoal.vision.postprocess import DetectOptions, detect_one, postprocess
from shoal.vision.resize import resize_bilinear
from tests.detector_support import encode, scene


# -- decoding --
def test_decode_png_and_jpeg_to_rgb() -> None:
    img = scene(64, 48)
    assert np.array_equal(decode_image(encode(img)), np.asarray(img))
    jpeg = decode_image(encode(img, "JPEG", quality=95))
    assert jpeg.shape == (48, 64, 3) and jpeg.dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1"])
def test_decode_converts_every_mode_to_three_channels(mode: str) -> None:
    assert decode_image(encode(scene(32, 16).convert(mode))).shape == (16, 32, 3)


def test_decode_applies_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = encode(scene(40, 20), "JPEG", exif=exif.tobytes())
    assert decode_image(data).shape == (40, 20, 3)


def test_decode_refuses_bad_images_naming_the_problem() -> None:
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageError, match="not an image"):
        decode_image(b"hello, this is text and not a picture")
    jpeg = encode(scene(200, 150), "JPEG")
    with pytest.raises(ImageError, match="truncated"):
        decode_image(jpeg[: len(jpeg) // 2])
    png = encode(scene(200, 150))
    with pytest.raises(ImageError, match="truncated|corrupt"):
        decode_image(png[: len(png) // 2])
    with pytest.raises(ImageTooLarge, match="exceeds the cap of 1000 pixels"):
        decode_image(encode(scene(40, 30)), max_pixels=1000)


# -- letterbox geometry (Ultralytics' rounding) --
@pytest.mark.parametrize("h,w,expect", [
    (600, 800, (480, 640, 80, 0)), (720, 1280, (360, 640, 140, 0)), (480, 640, (480, 640, 80, 0)),
    (777, 333, (640, 274, 0, 183)), (3000, 1, (640, 1, 0, 319)), (100, 100, (640, 640, 0, 0)),
])
def test_geometry(h: int, w: int, expect: tuple[int, int, int, int]) -> None:
    g = Geometry.of(h, w, 640)
    assert (g.new_height, g.new_width, g.top, g.left) == expect


def test_letterbox_pads_with_grey_and_keeps_pixels_when_not_resized() -> None:
    img = np.asarray(scene(640, 480))
    x, g = letterbox(img, 640)
    assert x.shape == (3, 640, 640) and x.dtype == torch.float32
    assert torch.all(x[:, : g.top] == PAD_VALUE / 255) and torch.all(x[:, g.top + 480:] == PAD_VALUE / 255)
    inner = (x[:, g.top:g.top + 480] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(inner, img)


@given(st.integers(8, 2000), st.integers(8, 2000), st.floats(0.05, 0.9), st.floats(0.05, 0.9))
@settings(max_examples=60, deadline=None)
def test_scale_boxes_inverts_the_letterbox(h: int, w: int, fx: float, fy: float) -> None:
    g = Geometry.of(h, w, 640)
    box = torch.tensor([[fx * w, fy * h, min(w, fx * w + w / 10), min(h, fy * h + h / 10)]], dtype=torch.float64)
    sx, sy = g.new_width / w, g.new_height / h
    in_input = torch.stack([box[:, 0] * sx + g.left, box[:, 1] * sy + g.top,
                            box[:, 2] * sx + g.left, box[:, 3] * sy + g.top], dim=1)
    assert torch.allclose(scale_boxes(in_input, g), box, atol=1e-6)


# -- resize: OpenCV INTER_LINEAR semantics (bit-exactness against OpenCV is in test_detector_ultralytics) --
def test_resize_exact_halving_is_the_rounded_mean_of_four() -> None:
    img = torch.randint(0, 256, (40, 60, 3), dtype=torch.uint8)
    out = resize_bilinear(img, 20, 30)
    blocks = img.view(20, 2, 30, 2, 3).to(torch.int32).sum(dim=(1, 3))
    assert torch.equal(out.to(torch.int32), (blocks + 2) // 4)


def test_resize_keeps_constant_images_and_shapes() -> None:
    img = torch.full((123, 77, 3), 201, dtype=torch.uint8)
    for h, w in ((640, 401), (61, 38), (1, 1), (500, 3)):
        out = resize_bilinear(img, h, w)
        assert out.shape == (h, w, 3) and out.dtype == torch.uint8 and torch.all(out == 201)


# -- NMS --
def _reference_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep: list[int] = []
    for i in order:
        if all(float(box_iou_one(boxes[k], boxes[i:i + 1])[0]) <= thr for k in keep):
            keep.append(i)
    return keep


def _random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 300
    wh = torch.rand(n, 2, generator=g) * 80 + 5
    scores = torch.rand(n, generator=g)
    classes = torch.randint(0, 3, (n,), generator=g)
    return torch.cat([xy, xy + wh], 1), scores, classes


@pytest.mark.parametrize("seed", range(5))
def test_nms_torch_equals_greedy_reference(seed: int) -> None:
    boxes, scores, _ = _random_boxes(150, seed)
    assert nms_torch(boxes, scores, 0.45).tolist() == _reference_nms(boxes, scores, 0.45)


def test_nms_is_class_aware_and_keeps_at_most_max_keep() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    classes = torch.tensor([0, 1, 0, 0])
    kept = batched_nms(boxes, scores, classes, 0.5, 300, use_torchvision=False).tolist()
    assert kept == [0, 1, 3]
    assert batched_nms(boxes, scores, classes, 0.5, 300, agnostic=True, use_torchvision=False).tolist() == [0, 3]
    assert batched_nms(boxes, scores, classes, 0.5, 2, use_torchvision=False).tolist() == [0, 1]
    assert batched_nms(boxes[:0], scores[:0], classes[:0], 0.5, 300).numel() == 0


def test_nms_keeps_a_box_whose_iou_equals_the_threshold() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10.]])  # IoU exactly 1/3
    assert nms_torch(boxes, torch.tensor([0.9, 0.8]), 1 / 3).tolist() == [0, 1]


# -- postprocess --
def _raw(boxes_xywh: list[list[float]], scores: list[list[float]]) -> torch.Tensor:
    return torch.cat([torch.tensor(boxes_xywh).T, torch.tensor(scores).T], dim=0)


def test_detect_one_filters_by_confidence_and_classes() -> None:
    raw = _raw([[100, 100, 20, 20], [102, 100, 20, 20], [300, 300, 40, 40], [500, 500, 10, 10]],
               [[0.9, 0.1], [0.8, 0.0], [0.1, 0.7], [0.2, 0.1]])
    det = detect_one(raw, DetectOptions(conf=0.25, iou=0.5))
    assert det.classes.tolist() == [0, 1] and torch.allclose(det.scores, torch.tensor([0.9, 0.7]))
    assert det.boxes[0].tolist() == [90, 90, 110, 110]
    only_1 = detect_one(raw, DetectOptions(conf=0.25, classes=(1,)))
    assert only_1.classes.tolist() == [1]
    assert detect_one(raw, DetectOptions(conf=0.95)).boxes.shape == (0, 4)


def test_postprocess_maps_boxes_to_each_images_pixels() -> None:
    raw = _raw([[320, 320, 64, 64]], [[0.9]])
    geos = [Geometry.of(600, 800, 640), Geometry.of(1280, 640, 640)]
    dets = postprocess(torch.stack([raw, raw]), geos, [DetectOptions(), DetectOptions()])
    assert dets[0].boxes[0].tolist() == pytest.approx([360, 260, 440, 340])
    assert dets[1].boxes[0].tolist() == pytest.approx([256, 576, 384, 704])
    assert dets[0].to_json(["thing"])["names"] == ["thing"]
