"""Forward timings that survive a busy machine: wall time beside the threads' own CPU time and wait.

Why: profiles are taken on build hosts and CI runners that other jobs share. A forward timed
while a neighbour held a core used to be recorded as the model's latency (MiniLM b8 at 33x b1),
and ``precision: auto`` and ``shoal pack`` then decided on noise. Linux counts, per thread, the
time spent on a CPU and the time spent runnable but waiting for one (``/proc/self/task/*/schedstat``):

- one compute thread: ``wall - wait`` is the forward's own time, whatever the neighbours do;
- several threads (OpenMP): a descheduled thread stalls its peers at every barrier, and the
  peers' spinning inflates CPU time, so neither counter corrects the wall time; only runs
  that waited for no CPU (wait under ``QUIET_WAIT`` of the wall time) are kept, and a window
  counts if any of its runs was kept.

Runs are grouped in windows; a batch size's figure is its lowest window median, and it counts
as stable once another window reproduces it within ``AGREE`` and latency grows with batch size
by at most the batch factor. Windows are interleaved across batch sizes, so a burst of
contention cannot land on one batch size only. What stays unstable after the budget is
reported as such (``Timings.unstable``), never silently recorded as the model's latency.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

WALL_CAP = 4.0  # a busy machine may stretch the budget (counted in the forwards' own time) this much in wall time
QUIET_WAIT = 0.05  # a multi-threaded run that waited for a CPU longer than this fraction of its wall time is dropped
AGREE = 0.10  # a second window within 10 % of the lowest reproduces it
SCALING_SLACK = 0.20  # b_big / b_small must lie within [1 - slack, factor x (1 + slack)]
TASKS = "/proc/self/task"


@dataclass(frozen=True)
class Budget:
    """How long to keep measuring: runs per window, windows per batch size, seconds per batch size.

    The seconds count the forwards' own time, so contention buys more windows, not fewer
    (up to ``WALL_CAP`` x the budget in wall time).
    """

    window: int = 5
    min_windows: int = 2
    max_windows: int = 8
    seconds: float = 3.0


QUICK = Budget(window=3, min_windows=2, max_windows=3, seconds=0.2)  # tests: tiny models, figures unused


class ThreadClock:
    """Milliseconds on a CPU and waiting for one, summed over this process's threads (0, 0 off Linux)."""

    def __init__(self) -> None:
        self.available = self._read() is not None

    @staticmethod
    def _read() -> tuple[float, float] | None:
        try:
            tids = os.listdir(TASKS)
        except OSError:
            return None
        on_cpu = waited = 0
        for tid in tids:
            try:
                with open(f"{TASKS}/{tid}/schedstat", "rb") as fh:
                    fields = fh.read().split()
            except OSError:
                continue  # a thread that ended between listing and reading
            on_cpu += int(fields[0])
            waited += int(fields[1])
        return on_cpu / 1e6, waited / 1e6

    def read(self) -> tuple[float, float]:
        got = self._read() if self.available else None
        return got if got is not None else (0.0, 0.0)


@dataclass
class Run:
    wall_ms: float
    cpu_ms: float
    wait_ms: float


def own_time(run: Run, threads: int, counted: bool) -> float | None:
    """The forward's own milliseconds, or None for a multi-threaded run a neighbour slowed down."""
    if not counted:
        return run.wall_ms  # no counters here (not Linux): the window logic is all there is
    if threads == 1:
        return min(run.wall_ms, max(run.wall_ms - run.wait_ms, run.cpu_ms))
    return run.wall_ms if run.wait_ms <= QUIET_WAIT * run.wall_ms else None


@dataclass
class Series:
    """The windows measured for one batch size."""

    runs: list[list[Run]] = field(default_factory=list)
    medians: list[float | None] = field(default_factory=list)

    def add(self, window: list[Run], threads: int, counted: bool) -> None:
        """A window counts if any run in it went uncontended (on a shared machine, often one in a few)."""
        own = [t for t in (own_time(r, threads, counted) for r in window) if t is not None]
        self.runs.append(window)
        self.medians.append(statistics.median(own) if own else None)

    @property
    def valid(self) -> list[float]:
        return [m for m in self.medians if m is not None]

    def best(self) -> float:
        """The lowest window median; with no usable window, the lowest median wall time (flagged)."""
        if self.valid:
            return min(self.valid)
        return min(statistics.median(r.wall_ms for r in w) for w in self.runs)

    def reproduced(self) -> bool:
        valid = sorted(self.valid)
        return len(valid) >= 2 and valid[1] <= valid[0] * (1 + AGREE)

    def wait_fraction(self) -> float:
        runs = [r for w in self.runs for r in w]
        return sum(r.wait_ms for r in runs) / max(1e-9, sum(r.wall_ms for r in runs))


def scaling_problem(latency: dict[int, float]) -> str | None:
    """Why the figures cannot all be true, if they cannot: latency must grow with batch size, at most linearly."""
    sizes = sorted(latency)
    for small, big in zip(sizes, sizes[1:]):
        ratio = latency[big] / latency[small]
        factor = big / small
        if ratio > factor * (1 + SCALING_SLACK):
            return f"b{big} took {ratio:.1f}x b{small} (at most {factor:g}x expected)"
        if ratio < 1 - SCALING_SLACK:
            return f"b{big} took {ratio:.2f}x b{small} (a bigger batch cannot be faster)"
    return None


@dataclass
class Timings:
    latency_ms: dict[int, float]
    unstable: str | None
    windows: dict[int, list[float | None]]
    wait_fraction: float
    starved: list[int]  # batch sizes with no usable window: every run waited for a CPU


def time_forwards(forwards: dict[int, Callable[[], object]], threads: int, budget: Budget,
                  clock: ThreadClock | None = None) -> Timings:
    """Time ``forwards[bs]()`` in interleaved windows until every figure is reproduced and plausible."""
    clock = clock or ThreadClock()
    series = {bs: Series() for bs in forwards}
    window = {bs: budget.window for bs in forwards}
    allowed_s = budget.seconds * len(forwards)
    wall_deadline = time.perf_counter() + WALL_CAP * allowed_s
    spent_s = 0.0
    for round_ in range(budget.max_windows):
        for bs, forward in forwards.items():
            if round_ >= budget.min_windows and series[bs].reproduced() and _plausible(series):
                continue
            runs = _window(forward, clock, window[bs], wall_deadline)
            series[bs].add(runs, threads, clock.available)
            window[bs] = _window_size(budget, runs)
            spent_s += sum(own_time(r, threads, clock.available) or r.wall_ms for r in runs) / 1000
        out_of_time = spent_s > allowed_s or time.perf_counter() > wall_deadline
        if round_ + 1 >= budget.min_windows and (_settled(series) or out_of_time):
            break
        if all(not s.valid for s in series.values()):
            break  # not one run of a whole round escaped contention: more of the same would not either
    latency = {bs: s.best() for bs, s in series.items()}
    return Timings(latency, _why_unstable(series, latency, threads),
                   {bs: s.medians for bs, s in series.items()},
                   sum(s.wait_fraction() for s in series.values()) / len(series),
                   [bs for bs, s in series.items() if not s.valid])


def _window(forward: Callable[[], object], clock: ThreadClock, size: int, wall_deadline: float) -> list[Run]:
    """Up to ``size`` runs, fewer once the wall-time cap has passed."""
    runs: list[Run] = []
    while len(runs) < size:
        runs.append(_one(forward, clock))
        if time.perf_counter() > wall_deadline:
            break
    return runs


def _one(forward: Callable[[], object], clock: ThreadClock) -> Run:
    cpu0, wait0 = clock.read()
    t0 = time.perf_counter()
    forward()
    wall = (time.perf_counter() - t0) * 1000
    cpu1, wait1 = clock.read()
    return Run(wall, cpu1 - cpu0, wait1 - wait0)


def _window_size(budget: Budget, runs: list[Run]) -> int:
    """Fewer runs per window for slow forwards, so two windows fit the budget (but never under 3)."""
    per_run_s = min(r.wall_ms for r in runs) / 1000
    fit = int(budget.seconds / max(1e-6, 2 * per_run_s))
    return max(min(3, budget.window), min(budget.window, fit))


def _plausible(series: dict[int, Series]) -> bool:
    return scaling_problem({bs: s.best() for bs, s in series.items()}) is None


def _settled(series: dict[int, Series]) -> bool:
    return all(s.reproduced() for s in series.values()) and _plausible(series)


def _why_unstable(series: dict[int, Series], latency: dict[int, float], threads: int) -> str | None:
    for bs, s in series.items():
        if not s.valid:
            return (f"the machine is busy: no {threads}-thread run of b{bs} went without waiting for a CPU "
                    f"(waits added up to {s.wait_fraction():.0%} of the wall time)")
    for bs, s in series.items():
        if not s.reproduced():
            shown = ", ".join("-" if m is None else f"{m:.1f}" for m in s.medians)
            return f"b{bs}: no two windows agreed within {AGREE:.0%} (window medians {shown} ms)"
    return scaling_problem(latency)
