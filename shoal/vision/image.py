"""Decode request bytes into an RGB image, refusing what is not one with a message naming the problem."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000  # 8K UHD is 33 Mpx; beyond that a frame is almost surely a mistake or a bomb


class ImageError(ValueError):
    """The bytes are not a usable image (the client's fault)."""


class ImageTooLarge(ImageError):
    """The image is larger than the server accepts."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """RGB uint8 array [H, W, 3], EXIF-rotated like OpenCV's imread (what Ultralytics reads with)."""
    if not data:
        raise ImageError("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(f"body is not an image (JPEG, PNG, BMP, WebP, ...): first bytes {data[:8]!r}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"image exceeds the cap of {max_pixels} pixels") from None
    except Exception as exc:  # a header Pillow recognises but cannot parse
        raise ImageError(f"image header is corrupt: {_one_line(exc)}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image of {width}x{height} pixels exceeds the cap of {max_pixels} pixels")
    try:
        img.load()
    except OSError as exc:  # Pillow: "image file is truncated (N bytes not processed)", broken data streams
        raise ImageError(f"{img.format or 'image'} is truncated or corrupt: {_one_line(exc)}") from None
    except Exception as exc:
        raise ImageError(f"{img.format or 'image'} is corrupt: {_one_line(exc)}") from None
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # a malformed EXIF block: keep the pixels as stored
        pass
    if img.mode != "RGB":
        img = img.convert("RGB")  # like imread(IMREAD_COLOR): gray is replicated, alpha is dropped
    return np.asarray(img)


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
