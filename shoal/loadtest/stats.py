"""What a run records: pooled latencies, errors by kind, per-model counts.

Why one recorder per process, merged at the end: clients never keep their own
percentiles (averaging them is the reference sample's mistake); they write into
the same histogram, and worker processes' recorders merge by adding counts.
Errors are counted by kind and never dropped, and the first message of each kind
is kept so a report can say *why*.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.loadtest.histogram import Histogram


@dataclass
class ModelStats:
    ok: int = 0
    errors: int = 0
    hist: Histogram = field(default_factory=Histogram)


class Recorder:
    """Counts for one measurement window (a whole run, or one stage of a burst)."""

    def __init__(self, label: str = "run", offered_rate: float | None = None,
                 max_error_rate: float | None = None) -> None:
        self.label = label
        self.offered_rate = offered_rate
        self.max_error_rate = max_error_rate
        self.hist = Histogram()
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.error_examples: dict[str, str] = {}
        self.models: dict[str, ModelStats] = {}
        self.first_start: float | None = None
        self.last_end: float | None = None
        self.max_lag_s = 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def total(self) -> int:
        return self.ok + self.error_count

    def _window(self, start: float, end: float) -> None:
        if self.first_start is None or start < self.first_start:
            self.first_start = start
        if self.last_end is None or end > self.last_end:
            self.last_end = end

    def record_ok(self, model: str, start: float, end: float) -> None:
        us = int((end - start) * 1e6)
        self.hist.record_us(us)
        self.ok += 1
        m = self.models.get(model)
        if m is None:
            m = self.models[model] = ModelStats()
        m.ok += 1
        m.hist.record_us(us)
        self._window(start, end)

    def record_error(self, model: str, kind: str, detail: str, start: float, end: float) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.error_examples.setdefault(kind, detail[:300])
        m = self.models.get(model)
        if m is None:
            m = self.models[model] = ModelStats()
        m.errors += 1
        self._window(start, end)

    def note_lag(self, lag_s: float) -> None:
        if lag_s > self.max_lag_s:
            self.max_lag_s = lag_s

    @property
    def duration_s(self) -> float:
        if self.first_start is None or self.last_end is None:
            return 0.0
        return max(self.last_end - self.first_start, 1e-9)

    @property
    def throughput(self) -> float:
        """Successful responses per second over the measurement window."""
        return self.ok / self.duration_s if self.ok else 0.0

    @property
    def error_rate(self) -> float:
        return self.error_count / self.total if self.total else 0.0

    def merge(self, other: "Recorder") -> "Recorder":
        self.hist.merge(other.hist)
        self.ok += other.ok
        for k, n in other.errors.items():
            self.errors[k] = self.errors.get(k, 0) + n
        for k, msg in other.error_examples.items():
            self.error_examples.setdefault(k, msg)
        for mid, ms in other.models.items():
            mine = self.models.setdefault(mid, ModelStats())
            mine.ok += ms.ok
            mine.errors += ms.errors
            mine.hist.merge(ms.hist)
        if other.first_start is not None and other.last_end is not None:
            self._window(other.first_start, other.last_end)
        self.max_lag_s = max(self.max_lag_s, other.max_lag_s)
        if other.offered_rate is not None:
            self.offered_rate = (self.offered_rate or 0.0) + other.offered_rate
        return self

    def to_dict(self) -> dict:
        """Lossless form, shipped from worker processes (window times are wall-clock based)."""
        return {
            "label": self.label, "offered_rate": self.offered_rate, "max_error_rate": self.max_error_rate,
            "hist": self.hist.to_dict(), "ok": self.ok,
            "errors": self.errors, "error_examples": self.error_examples,
            "models": {m: {"ok": s.ok, "errors": s.errors, "hist": s.hist.to_dict()} for m, s in self.models.items()},
            "first_start": self.first_start, "last_end": self.last_end, "max_lag_s": self.max_lag_s,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Recorder":
        r = cls(d["label"], d.get("offered_rate"), d.get("max_error_rate"))
        r.hist = Histogram.from_dict(d["hist"])
        r.ok = d["ok"]
        r.errors = dict(d["errors"])
        r.error_examples = dict(d["error_examples"])
        r.models = {m: ModelStats(s["ok"], s["errors"], Histogram.from_dict(s["hist"])) for m, s in d["models"].items()}
        r.first_start, r.last_end, r.max_lag_s = d["first_start"], d["last_end"], d["max_lag_s"]
        return r

    def summary(self) -> dict:
        """The machine-readable report of this window (what ``--json`` writes)."""
        return {
            "label": self.label,
            "offered_rate_rps": self.offered_rate,
            "requests": self.total,
            "ok": self.ok,
            "errors": self.error_count,
            "error_rate": round(self.error_rate, 6),
            "error_rate_limit": self.max_error_rate,  # this window's own limit, if it has one
            "errors_by_kind": dict(sorted(self.errors.items())),
            "error_examples": dict(sorted(self.error_examples.items())),
            "duration_s": round(self.duration_s, 3),
            "throughput_rps": round(self.throughput, 2),
            "latency_ms": self.hist.summary_ms(),
            "max_schedule_lag_ms": round(self.max_lag_s * 1000, 3),
            "per_model": {m: {"ok": s.ok, "errors": s.errors, "p50_ms": s.hist.percentile_ms(50),
                              "p95_ms": s.hist.percentile_ms(95)} for m, s in sorted(self.models.items())},
        }
