"""A small log-linear (HDR-style) latency histogram.

Why: percentiles must be computed over *pooled* samples from every client (and
every worker process), never averaged per client. A histogram of integer
microseconds with 2048 linear sub-buckets per power of two keeps 3 significant
digits (relative error < 1/1024), records in O(1), merges by adding counts, and
serialises to a small dict, so worker processes can ship theirs to the parent.

Values below 2048 us are stored exactly. Percentiles use the nearest-rank
definition (the smallest recorded value with at least p% of samples at or below
it) and report the highest value equivalent to that bucket, clamped to the
recorded min and max, as HdrHistogram does.
"""

from __future__ import annotations

import math
from typing import Iterable

_SUB_BITS = 11  # 2048 exact values, then 1024 sub-buckets per octave
_SUB_COUNT = 1 << _SUB_BITS
_HALF = _SUB_COUNT >> 1


def bucket_index(value_us: int) -> int:
    """Index of the bucket holding ``value_us`` (non-negative integer microseconds)."""
    if value_us < _SUB_COUNT:
        return value_us
    shift = value_us.bit_length() - _SUB_BITS
    return (shift << (_SUB_BITS - 1)) + (value_us >> shift)


def bucket_range(index: int) -> tuple[int, int]:
    """(lowest, highest) microsecond values that share bucket ``index``."""
    if index < _SUB_COUNT:
        return index, index
    shift = (index >> (_SUB_BITS - 1)) - 1
    low = (index - (shift << (_SUB_BITS - 1))) << shift
    return low, low + (1 << shift) - 1


class Histogram:
    """Counts of latencies in microseconds; mergeable and serialisable."""

    __slots__ = ("counts", "total", "min_us", "max_us", "sum_us")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.min_us = 0
        self.max_us = 0
        self.sum_us = 0

    def record_us(self, value_us: int) -> None:
        v = value_us if value_us > 0 else 0
        idx = v if v < _SUB_COUNT else bucket_index(v)
        counts = self.counts
        counts[idx] = counts.get(idx, 0) + 1
        if self.total == 0 or v < self.min_us:
            self.min_us = v
        if v > self.max_us:
            self.max_us = v
        self.total += 1
        self.sum_us += v

    def record_seconds(self, seconds: float) -> None:
        self.record_us(int(round(seconds * 1e6)))

    def record_many_us(self, values: Iterable[int]) -> None:
        for v in values:
            self.record_us(v)

    def merge(self, other: "Histogram") -> "Histogram":
        """Add ``other``'s samples into this histogram (pooling, not averaging)."""
        if other.total == 0:
            return self
        for idx, n in other.counts.items():
            self.counts[idx] = self.counts.get(idx, 0) + n
        self.min_us = other.min_us if self.total == 0 else min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)
        self.total += other.total
        self.sum_us += other.sum_us
        return self

    def percentile_us(self, p: float) -> int:
        """Nearest-rank percentile ``p`` in [0, 100], in microseconds (0 when empty)."""
        if self.total == 0:
            return 0
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"percentile must be within 0..100, got {p}")
        rank = max(1, math.ceil(p / 100.0 * self.total))
        seen = 0
        for idx in sorted(self.counts):
            seen += self.counts[idx]
            if seen >= rank:
                high = bucket_range(idx)[1]
                return max(self.min_us, min(high, self.max_us))
        return self.max_us

    def percentile_ms(self, p: float) -> float:
        return self.percentile_us(p) / 1000.0

    @property
    def mean_ms(self) -> float:
        return self.sum_us / self.total / 1000.0 if self.total else 0.0

    def summary_ms(self) -> dict[str, float]:
        """The figures every report shows, in milliseconds."""
        return {
            "count": self.total,
            "min": self.min_us / 1000.0,
            "mean": round(self.mean_ms, 3),
            "p50": self.percentile_ms(50),
            "p90": self.percentile_ms(90),
            "p95": self.percentile_ms(95),
            "p99": self.percentile_ms(99),
            "max": self.max_us / 1000.0,
        }

    def to_dict(self) -> dict:
        return {"unit": "us", "sub_bits": _SUB_BITS, "total": self.total, "min": self.min_us,
                "max": self.max_us, "sum": self.sum_us, "counts": {str(k): v for k, v in self.counts.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "Histogram":
        if data.get("sub_bits", _SUB_BITS) != _SUB_BITS:
            raise ValueError("histogram was written with a different precision")
        h = cls()
        h.counts = {int(k): int(v) for k, v in data["counts"].items()}
        h.total, h.min_us, h.max_us, h.sum_us = data["total"], data["min"], data["max"], data["sum"]
        return h
