"""The scheduler alone, without the CPU: 40 closed-loop clients over 24 models, a handler that sleeps.

Shows whether the device scheduler keeps FIFO order across models and how the batching fairness
knob trades throughput for latency spread, free of the noise a shared CPU adds to real forwards.
Service time per batch = ``--fixed-ms`` + ``--per-input-ms`` x inputs (sleeps release the GIL).

    .venv/bin/python benchmarks/server_schedsim.py --fairness 0,0.1,inf
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoal.devices import Device  # noqa: E402
from shoal.server.batcher import ModelBatcher, Scheduler  # noqa: E402
from shoal.server.executor import DeviceExecutor  # noqa: E402
from shoal.server.handlers.base import Handler, LoadContext, Parsed  # noqa: E402
from shoal.server.metrics import Metrics  # noqa: E402
from shoal.store.manifest import Manifest  # noqa: E402


class Sleeper(Handler):
    def __init__(self, name: str, fixed_s: float, per_input_s: float, sizes: list[int]) -> None:
        super().__init__(Manifest(id=name, kind="text", task="classification"), Path("."), LoadContext("cpu", "cpu"))
        self.fixed_s, self.per_input_s, self.sizes = fixed_s, per_input_s, sizes

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
        self.sizes.append(len(inputs))
        time.sleep(self.fixed_s + self.per_input_s * len(inputs))
        return inputs

    def infer(self, batch: Any) -> Any:
        return batch

    def postprocess(self, outputs: Any, batch: Any, inputs: list[Any]) -> list[Any]:
        return list(outputs)


async def run(fairness: float, args: argparse.Namespace) -> dict:
    sizes: list[int] = []
    metrics = Metrics(args.models, 1000)
    scheduler = Scheduler(DeviceExecutor(Device("cpu"), args.executors, 1), 100000, fairness)
    batchers = [ModelBatcher(str(i), Sleeper(str(i), args.fixed_ms / 1e3, args.per_input_ms / 1e3, sizes), 16, 2.0,
                             1000, metrics.model(str(i))) for i in range(args.models)]
    latencies: list[float] = []
    records: list[tuple[float, float]] = []
    warm = time.perf_counter() + args.warmup
    stop = warm + args.seconds

    async def client(i: int) -> None:
        rng = random.Random(i)
        while time.perf_counter() < stop:
            t = time.perf_counter()
            p = scheduler.submit(rng.choice(batchers), ["x"], True, False, 600)
            await p.future
            if t > warm:
                latencies.append(time.perf_counter() - t)
                records.append((p.enqueued, p.enqueued + p.queue_s))

    await asyncio.gather(*(client(i) for i in range(args.clients)))
    scheduler.executor.shutdown()
    latencies.sort()
    n = len(latencies)
    by_arrival = sorted(records)
    start_rank = {r: i for i, r in enumerate(sorted(records, key=lambda r: r[1]))}
    moved = sorted(start_rank[r] - i for i, r in enumerate(by_arrival))
    return {"fairness": fairness, "throughput": round(n / args.seconds, 1), "p50_ms": round(latencies[n // 2] * 1e3),
            "p99_ms": round(latencies[int(0.99 * n)] * 1e3),
            "p99_over_p50": round(latencies[int(0.99 * n)] / latencies[n // 2], 3),
            "mean_batch": round(sum(sizes) / len(sizes), 2),
            "start_order_minus_arrival_order_p1_p99": [moved[len(moved) // 100], moved[99 * len(moved) // 100]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fairness", default="0,0.1,inf")
    ap.add_argument("--clients", type=int, default=40)
    ap.add_argument("--models", type=int, default=24)
    ap.add_argument("--executors", type=int, default=2)
    ap.add_argument("--fixed-ms", type=float, default=10.0)
    ap.add_argument("--per-input-ms", type=float, default=4.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    args = ap.parse_args()
    for f in args.fairness.split(","):
        print(json.dumps(asyncio.run(run(float(f), args))), flush=True)


if __name__ == "__main__":
    main()
