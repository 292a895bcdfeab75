"""Synthetic camera frames (Pillow drawing), so capacity runs and video load tests need no footage."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw

from shoal.errors import UsageError


def synthetic_frame(width: int = 1280, height: int = 720, seed: int = 0, shapes: int = 16) -> Image.Image:
    """A street-like frame: sky, road, and coloured boxes and ellipses standing in for objects."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), (150, 180, 210))
    draw = ImageDraw.Draw(image)
    horizon = height * 2 // 5
    draw.rectangle([0, horizon, width, height], fill=(70, 75, 80))
    for x in range(0, width, max(1, width // 12)):
        draw.rectangle([x, height * 3 // 4, x + width // 30, height * 3 // 4 + max(2, height // 80)],
                       fill=(230, 230, 230))
    for i in range(shapes):
        w, h = rng.randint(width // 30, width // 6), rng.randint(height // 20, height // 4)
        x, y = rng.randint(0, max(1, width - w)), rng.randint(horizon - h // 2, max(horizon, height - h))
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        (draw.ellipse if i % 3 == 0 else draw.rectangle)([x, y, x + w, y + h], fill=colour, outline=(20, 20, 20))
    return image


def encode_jpeg(image: Image.Image, quality: int = 85) -> bytes:
    """JPEG bytes, as a camera or an RTSP frame grabber would send them."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def frame_bytes(width: int, height: int, seed: int = 0) -> bytes:
    return encode_jpeg(synthetic_frame(width, height, seed))


def parse_size(text: str, flag: str = "--frame-size") -> tuple[int, int]:
    """'1280x720' -> (1280, 720), one clear line otherwise."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: use WxH, e.g. 1280x720") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise UsageError(f"{flag} {text!r}: each side must be 16..8192")
    return w, h
