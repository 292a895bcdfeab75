"""The knee of a throughput-vs-batch curve: where batching stops paying (shared by the sweep and its plots)."""

from __future__ import annotations

KNEE_FRACTION = 0.9


def knee(points: list[tuple[int, float]], fraction: float = KNEE_FRACTION) -> int | None:
    """Smallest batch size whose throughput reaches ``fraction`` of the best: past it, batching buys little."""
    if not points:
        return None
    best = max(t for _, t in points)
    return min(b for b, t in points if t >= fraction * best)
