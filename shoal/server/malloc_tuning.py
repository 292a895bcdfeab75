"""glibc malloc settings for a process that loads and unloads models all day.

By default glibc raises its mmap threshold after the first large free (up to 32 MiB),
so later weight tensors come from the heap, where a freed model's pages can stay
resident behind live allocations: RSS then holds one extra model after a few
load/unload cycles. A fixed 4 MiB threshold keeps large weights in their own
mappings (returned to the OS when freed) while activations (< 4 MiB) stay on the
fast heap; a 64 MiB trim threshold avoids shrinking and regrowing the heap on every
forward. The registry also calls malloc_trim(0) after each unload. Figures:
docs/RELIABILITY.md (leaks). Explicit ``MALLOC_*_`` environment variables win;
``SHOAL_MALLOC_TUNING=0`` keeps glibc's defaults (for comparison).
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024


def tune_malloc() -> bool:
    """Apply the thresholds with mallopt (glibc only); True if applied."""
    if os.environ.get("SHOAL_MALLOC_TUNING") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): nothing to tune
    applied = False
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) or applied
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        applied = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) or applied
    return applied
