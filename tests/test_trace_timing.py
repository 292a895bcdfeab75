"""Profiles on a busy machine (issue 13, item 3): believable figures, or a visible flag; a choice that holds.

The acceptance tests run the real measuring subprocess on the real MiniLM classifier as the
machine is, beside one CPU-burning process per core, and as the machine is again; the busy
figure must fall within TOLERANCE of the two quiet ones (which bracket any change in the
background load of a shared test machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import torch

from shoal.store.local import LocalStore
from shoal.trace import compilers, precision
from shoal.trace.sources import load_eager_model
from shoal.trace.stage import TraceOptions, trace_spec
from shoal.trace.timing import Budget, Run, ThreadClock, own_time, scaling_problem, time_forwards
from shoal.trace.tiny import tiny_spec
from shoal.trace.wrappers import wrap

TOLERANCE = 0.30  # within 30 % of the quiet figures (beside the burners, wall-time medians were 3.5x)
BURN = "while True: pass"
BATCHES = "1,4"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real all-MiniLM-L6-v2 classifier, frozen at 128 tokens (about 20-40 ms per sequence on one thread)."""
    from shoal.spec import load_spec

    spec = load_spec(REPO / "models" / "minilm-cls.yaml")
    ids = torch.randint(1000, 2000, (2, spec.seq_len))
    compiled = compilers.compile_torchscript(wrap(spec.task, load_eager_model(spec)), (ids, torch.ones_like(ids)))
    path = tmp_path_factory.mktemp("timing") / "model.pt"
    torch.jit.save(compiled.module, str(path))
    return path


class Burners:
    """One ``while True: pass`` process per core, ended by their own pids."""

    def __init__(self, count: int | None = None) -> None:
        self.count = count or os.cpu_count() or 2
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Burners":
        self.procs = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(self.count)]
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def measure_in_subprocess(artifact: Path, threads: int) -> dict[str, Any]:
    """``python -m shoal.trace.measure`` as the trace stage runs it."""
    proc = subprocess.run([sys.executable, "-m", "shoal.trace.measure", str(artifact), "--seq-len", "128",
                           "--batch-sizes", BATCHES, "--threads", str(threads), "--seconds", "1"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def within(busy: float, *quiet: float) -> bool:
    return min(quiet) * (1 - TOLERANCE) <= busy <= max(quiet) * (1 + TOLERANCE)


def quiet_busy_quiet(artifact: Path, threads: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    before = measure_in_subprocess(artifact, threads)
    # Two burners per core: with one per core the measured thread was sometimes left a core of its
    # own often enough (28 % of its time waiting) that the test's premise, a busy machine, failed.
    with Burners(2 * (os.cpu_count() or 2)):
        busy = measure_in_subprocess(artifact, threads)
    return before, busy, measure_in_subprocess(artifact, threads)


@pytest.mark.skipif(not ThreadClock().available, reason="needs per-thread schedstat (Linux)")
def test_one_thread_profile_beside_cpu_burners_matches_the_quiet_one(artifact: Path) -> None:
    before, busy, after = quiet_busy_quiet(artifact, 1)
    assert busy["cpu_wait_fraction"] > 0.3, busy  # the burners did take the CPUs from it
    for bs in before["latency_ms_p50"]:
        assert within(busy["latency_ms_p50"][bs], before["latency_ms_p50"][bs], after["latency_ms_p50"][bs]), \
            (bs, before, busy, after)


def test_multi_thread_profile_beside_cpu_burners_is_close_or_flagged(artifact: Path) -> None:
    """Two OpenMP threads on a shared machine: the figure holds, or the profile says why it cannot."""
    before = measure_in_subprocess(artifact, 2)
    with Burners():
        busy = measure_in_subprocess(artifact, 2)
    close = all(within(busy["latency_ms_p50"][bs], before["latency_ms_p50"][bs]) for bs in before["latency_ms_p50"])
    assert close or busy["unstable"], (before, busy)
    assert set(busy["one_thread_ms"]) == {"4"}
    assert within(busy["one_thread_ms"]["4"], before["one_thread_ms"]["4"]), (before, busy)  # what the choice uses


def test_issue_figures_fail_the_scaling_check() -> None:
    assert scaling_problem({1: 17.7, 8: 588.0}) == "b8 took 33.2x b1 (at most 8x expected)"
    assert scaling_problem({1: 10.0, 4: 30.0, 8: 55.0}) is None
    assert "cannot be faster" in (scaling_problem({1: 10.0, 8: 6.0}) or "")


def test_own_time_of_one_thread_and_the_quiet_rule_for_several() -> None:
    delayed = Run(wall_ms=30.0, cpu_ms=10.0, wait_ms=20.0)
    assert own_time(delayed, threads=1, counted=True) == 10.0
    assert own_time(delayed, threads=2, counted=True) is None  # a stalled OpenMP forward is dropped
    assert own_time(Run(30.0, 59.0, 0.5), threads=2, counted=True) == 30.0
    assert own_time(delayed, threads=2, counted=False) == 30.0


class ScriptedClock(ThreadClock):
    """A clock whose waits are scripted per run, for forwards that sleep to stand in for preemption."""

    def __init__(self) -> None:
        self.available = True
        self.cpu = self.wait = 0.0
        self.next_wait = 0.0
        self.reads = 0

    def read(self) -> tuple[float, float]:
        self.reads += 1
        if self.reads % 2 == 0:  # the read after a forward
            self.wait += self.next_wait
            self.cpu += 2.0
        return self.cpu, self.wait


def test_preempted_runs_cost_the_profile_nothing_on_one_thread() -> None:
    clock = ScriptedClock()
    count = [0]

    def forward() -> None:
        count[0] += 1
        preempted = count[0] % 3 == 0
        clock.next_wait = 20.0 if preempted else 0.0
        time.sleep(0.022 if preempted else 0.002)

    t = time_forwards({1: forward}, 1, Budget(window=5, min_windows=2, max_windows=4, seconds=1.0), clock)
    assert t.unstable is None and t.latency_ms[1] < 5.0, t


def test_figures_that_never_agree_are_flagged_not_recorded_silently() -> None:
    clock = ScriptedClock()
    clock.available = False  # no counters: windows must agree on their own
    durations = iter([0.002] * 3 + [0.006] * 3 + [0.012] * 3 + [0.024] * 3)

    def forward() -> None:
        time.sleep(next(durations))

    t = time_forwards({1: forward}, 1, Budget(window=3, min_windows=2, max_windows=4, seconds=5.0), clock)
    assert t.unstable and "no two windows agreed" in t.unstable, t


def test_several_threads_that_always_waited_are_starved_and_flagged() -> None:
    clock = ScriptedClock()

    def forward() -> None:
        clock.next_wait = 5.0
        time.sleep(0.002)

    t = time_forwards({1: forward, 8: forward}, 2, Budget(window=3, min_windows=2, max_windows=2, seconds=1.0), clock)
    assert t.starved == [1, 8] and t.unstable and "without waiting for a CPU" in t.unstable


def _candidate(name: str, latency: float, one_thread: float | None) -> SimpleNamespace:
    profile: dict[str, Any] = {"latency_ms_p50": {8: latency}}
    if one_thread is not None:
        profile["one_thread_ms"] = {"8": one_thread}
    return SimpleNamespace(precision=name, profile=profile)


def test_precision_choice_does_not_flip_when_one_candidate_was_timed_in_a_burst() -> None:
    """issue 13: minilm-embed kept fp32 where bf16 is about 2x faster, because bf16 was timed during a burst."""
    fp32 = _candidate("fp32", latency=300.0, one_thread=300.0)
    bf16_in_a_burst = _candidate("bf16", latency=900.0, one_thread=160.0)
    assert precision.fastest([fp32, bf16_in_a_burst], 8).precision == "bf16"
    assert precision.fastest([bf16_in_a_burst, fp32], 8).precision == "bf16"
    near_tie = _candidate("bf16", latency=290.0, one_thread=285.0)
    assert precision.fastest([fp32, near_tie], 8).precision == "fp32", "a less exact precision must win by 10 %"
    no_figure = _candidate("bf16", latency=150.0, one_thread=None)
    assert precision.fastest([_candidate("fp32", 300.0, None), no_figure], 8).precision == "bf16"


def test_an_unstable_profile_is_said_on_the_console_and_in_the_manifest(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shoal.trace.measure as measure_module

    note = "b8: no two windows agreed within 10 % (window medians 588.0, 97.0 ms)"

    def busy_measure(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"resident_bytes": 1 << 20, "load_ms": 1.0, "latency_ms_p50": {1: 17.7, 4: 97.0}, "unstable": note,
                "one_thread_ms": {4: 97.0}}

    monkeypatch.setattr(measure_module, "measure", busy_measure)
    lines: list[str] = []
    manifest, _ = trace_spec(tiny_spec("busy"), LocalStore(tmp_path / "store"),
                             TraceOptions(isolated_profile=False, build_dir=tmp_path / "build", log=lines.append))
    assert manifest.profile and manifest.profile.unstable == note
    assert any("warning" in line and "not stable" in line and note in line for line in lines), lines
