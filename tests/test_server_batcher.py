"""The scheduler in-process: oldest-first across models, fair batching, deadlines and queue bounds."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from shoal.devices import Device
from shoal.server.batcher import ModelBatcher, Scheduler
from shoal.server.errors import DeadlineExceeded, Overloaded
from shoal.server.executor import DeviceExecutor
from shoal.server.handlers.base import Handler, LoadContext, Parsed
from shoal.server.metrics import Metrics
from shoal.store.manifest import Manifest


class Recorder(Handler):
    """A real handler whose 'model' echoes inputs and records every batch; ``gate`` holds the device."""

    def __init__(self, name: str, log: list[tuple[str, list[Any]]], gate: threading.Event) -> None:
        super().__init__(Manifest(id=name, kind="text", task="classification"), Path("."), LoadContext("cpu", "cpu"))
        self.log, self.gate = log, gate

    def parse(self, body: Any) -> Parsed:
        return Parsed([body], True)

    def parse_v2(self, request: Any) -> list[Any]:
        return []

    def to_v2(self, results: list[Any]) -> list[dict[str, Any]]:
        return []

    def v2_metadata(self) -> dict[str, Any]:
        return {}

    def sample_inputs(self) -> list[Any]:
        return ["x"]

    def preprocess(self, inputs: list[Any]) -> Any:
        self.gate.wait(10)
        self.log.append((self.manifest.id, list(inputs)))
        return inputs

    def infer(self, batch: Any) -> Any:
        return batch

    def postprocess(self, outputs: Any, batch: Any, inputs: list[Any]) -> list[Any]:
        return [f"{self.manifest.id}:{x}" for x in outputs]


def setup(fairness: float, max_queue: int = 64,
          prefetch: int = 0) -> tuple[Scheduler, dict[str, ModelBatcher], list, threading.Event]:
    """One executor thread; no prefetch unless asked, so the order tests see one hand-over at a time."""
    log: list[tuple[str, list[Any]]] = []
    gate = threading.Event()
    metrics = Metrics(3, 10)
    scheduler = Scheduler(DeviceExecutor(Device("cpu"), 1, 1), 1000, fairness, prefetch)
    batchers = {n: ModelBatcher(n, Recorder(n, log, gate), 8, 0.0, max_queue, metrics.model(n)) for n in "abc"}
    return scheduler, batchers, log, gate


async def drive(fairness: float) -> list[tuple[str, list[Any]]]:
    scheduler, b, log, gate = setup(fairness)
    scheduler.wait_avg_s = 1.0  # pretend requests usually wait a second
    order = [("a", "a0"), ("b", "b0"), ("a", "a1"), ("c", "c0"), ("a", "a2")]
    pending = []
    for model, item in order:
        pending.append(scheduler.submit(b[model], [item], True, True, 10))
        await asyncio.sleep(0.001)
    gate.set()
    results = await asyncio.gather(*(p.future for p in pending))
    assert [r[0][0] for r in results] == [f"{m}:{i}" for m, i in order]
    return log


def test_oldest_first_and_fair_batching() -> None:
    # a0 holds the device; then b0 is the oldest request, so a1 and a2 may not jump ahead of b0 and c0.
    assert asyncio.run(drive(0.0)) == [("a", ["a0"]), ("b", ["b0"]), ("a", ["a1"]), ("c", ["c0"]), ("a", ["a2"])]
    # greedy batching: a1 and a2 join a's next batch ahead of c0
    assert asyncio.run(drive(float("inf"))) == [("a", ["a0"]), ("b", ["b0"]), ("a", ["a1", "a2"]), ("c", ["c0"])]


def test_single_busy_model_fills_batches() -> None:
    async def run() -> list:
        scheduler, b, log, gate = setup(0.0)
        pending = [scheduler.submit(b["a"], [i], True, False, 10) for i in range(17)]
        gate.set()
        await asyncio.gather(*(p.future for p in pending))
        return [len(batch) for _, batch in log]

    assert asyncio.run(run()) == [1, 8, 8]


def test_prefetch_hands_the_next_batch_over_before_the_thread_is_free() -> None:
    """With prefetch 1 a second batch waits in the executor's queue (formed from what was queued then)."""
    async def run() -> tuple[list, int, int]:
        scheduler, b, log, gate = setup(0.0, prefetch=1)
        pending = [scheduler.submit(b["a"], [i], True, False, 10) for i in range(5)]
        handed, running = scheduler.free, scheduler.running
        gate.set()
        await asyncio.gather(*(p.future for p in pending))
        return [len(batch) for _, batch in log], handed, running

    sizes, free, running = asyncio.run(run())
    assert (free, running) == (0, 1)  # two batches handed over, one thread busy (the gauge never says 2)
    assert sizes == [1, 1, 3]


def test_deadline_and_bounds() -> None:
    async def run() -> None:
        scheduler, b, log, gate = setup(0.1, max_queue=4)
        first = scheduler.submit(b["a"], ["held"], True, False, 10)
        late = scheduler.submit(b["b"], ["late"], True, False, 0.05)
        with pytest.raises(DeadlineExceeded):
            await late.future
        assert scheduler.queued_total == 0 and b["b"].outstanding == 0
        with pytest.raises(Overloaded):
            scheduler.submit(b["c"], list("12345"), False, False, 10)
        gate.set()
        await first.future
        assert [m for m, _ in log] == ["a"]  # the expired request never ran

    asyncio.run(run())
