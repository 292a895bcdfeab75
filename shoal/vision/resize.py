"""Bilinear resize of uint8 images that reproduces OpenCV's ``INTER_LINEAR`` integer arithmetic.

Why not ``F.interpolate`` or Pillow: detections must match Ultralytics, which resizes with
OpenCV, and a detector can move a box when ~10% of its input pixels are one grey level
off. OpenCV computes 11-bit fixed-point weights from float32 source coordinates (half-
pixel centres, clamped at the edges), sums two columns exactly, then combines two rows
with its vectorised rounding: ``(((H0 >> 4) * b0 >> 16) + ((H1 >> 4) * b1 >> 16) + 2) >> 2``.
We do the same in int32 torch ops. Downscaling (camera frames larger than the model
input) matches OpenCV bit for bit; upscaling can differ by one grey level in the first
and last rows.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

COEF_BITS = 11
COEF_ONE = 1 << COEF_BITS


@functools.lru_cache(maxsize=256)
def _axis(src: int, dst: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (i0, i1) and fixed-point weights (w0, w1) for each destination index along one axis."""
    scale = 1.0 / (dst / src)  # OpenCV: scale = 1 / inv_scale, in double
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.int64)
    frac = (pos - i0.astype(np.float32)).astype(np.float32)
    low = i0 < 0
    frac[low], i0[low] = 0, 0
    high = i0 >= src - 1
    frac[high], i0[high] = 0, src - 1
    w1 = np.rint(frac * np.float32(COEF_ONE)).astype(np.int32)
    w0 = np.rint((np.float32(1) - frac) * np.float32(COEF_ONE)).astype(np.int32)
    i1 = np.minimum(i0 + 1, src - 1)
    return (torch.from_numpy(i0), torch.from_numpy(i1), torch.from_numpy(w0), torch.from_numpy(w1))


def resize_bilinear(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [H, W, C] -> uint8 [height, width, C], OpenCV ``INTER_LINEAR`` semantics."""
    src_h, src_w = image.shape[0], image.shape[1]
    x0, x1, a0, a1 = _axis(src_w, width)
    y0, y1, b0, b1 = _axis(src_h, height)
    a0, a1 = a0[None, :, None], a1[None, :, None]

    def columns(rows: torch.Tensor) -> torch.Tensor:  # exact horizontal pass on the rows we need, then >> 4
        left = rows.index_select(1, x0).to(torch.int32).mul_(a0)
        return left.add_(rows.index_select(1, x1).to(torch.int32).mul_(a1)).bitwise_right_shift_(4)

    top = columns(image.index_select(0, y0)).mul_(b0[:, None, None]).bitwise_right_shift_(16)
    bottom = columns(image.index_select(0, y1)).mul_(b1[:, None, None]).bitwise_right_shift_(16)
    return top.add_(bottom).add_(2).bitwise_right_shift_(2).clamp_(0, 255).to(torch.uint8)
