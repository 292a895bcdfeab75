"""Measure a saved artifact: resident memory added by loading it, and latency per batch size.

Run as its own process (``python -m shoal.trace.measure``) so the figures are not
polluted by the tracing process's memory and caches. The timing itself, and why it can be
trusted on a busy machine (or says it cannot), is ``shoal.trace.timing``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from shoal.trace.timing import Budget, Timings, time_forwards


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_artifact(artifact: Path, make_inputs: Callable[[int, Any], tuple], batch_sizes: list[int], threads: int,
                     device: str = "cpu", budget: Budget = Budget(),
                     choice_batch: int | Sequence[int] | None = None) -> dict:
    """Load ``artifact`` and time forwards on ``make_inputs(batch_size, generator)``, whatever the model kind.

    ``choice_batch``: also time that batch size (or those) on one thread (``one_thread_ms``), the
    figure ``precision: auto`` compares: a single compute thread's own time does not depend on what
    else the machine runs, so the choice does not flip with load.
    """
    import torch

    torch.set_num_threads(threads)
    # Warm the allocator and the torch runtime so their one-time cost is not charged to the model.
    with torch.inference_mode():
        torch.ones(8, 8) @ torch.ones(8, 8)
    before = rss_bytes()
    t0 = time.perf_counter()
    module = torch.jit.load(str(artifact), map_location=device)
    load_ms = (time.perf_counter() - t0) * 1000
    generator = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    forwards: dict[int, Callable[[], object]] = {}
    with torch.inference_mode():
        for bs in batch_sizes:
            inputs = tuple(t.to(device) for t in make_inputs(bs, generator))
            forwards[bs] = _forward(module, inputs, sync)
            for _ in range(2):  # the graph executor optimises on the first calls
                forwards[bs]()
        timings = time_forwards(forwards, threads, budget)
        resident = max(rss_bytes() - before, 0)
        latency, unstable = timings.latency_ms, timings.unstable
        if timings.starved and threads > 1:  # no run free of contention: record what can be measured under it
            latency = _on_one_thread(forwards, budget).latency_ms
            unstable = (f"{unstable}; recorded one thread's own time instead, an upper bound of the "
                        f"{threads}-thread latency")
        choices = [choice_batch] if isinstance(choice_batch, int) else list(choice_batch or [])
        one_thread_ms: dict[int, float] | None = None
        if choices:
            one_thread_ms = {b: latency[b] for b in choices} if threads == 1 or timings.starved else _on_one_thread(
                {b: forwards[b] for b in choices}, budget).latency_ms
    result: dict[str, Any] = {
        "resident_bytes": resident, "load_ms": round(load_ms, 2),
        "latency_ms_p50": {bs: round(ms, 3) for bs, ms in latency.items()},
        "unstable": unstable, "cpu_wait_fraction": round(timings.wait_fraction, 4),
        "windows_ms": {bs: [None if m is None else round(m, 3) for m in ms] for bs, ms in timings.windows.items()},
    }
    if one_thread_ms is not None:
        result["one_thread_ms"] = {b: round(ms, 3) for b, ms in one_thread_ms.items()}
    return result


def _forward(module: Any, inputs: tuple, sync: Callable[[], None]) -> Callable[[], object]:
    def run() -> object:
        out = module(*inputs)
        sync()
        return out

    return run


def _on_one_thread(forwards: dict[int, Callable[[], object]], budget: Budget) -> Timings:
    """The forwards' own time on one compute thread (wall minus waiting for a CPU): a busy machine barely moves it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for forward in forwards.values():
            forward()  # the first call on one thread re-plans the kernels
        return time_forwards(forwards, 1, replace(budget, window=min(3, budget.window)))
    finally:
        torch.set_num_threads(threads)


def measure(artifact: Path, seq_len: int, batch_sizes: list[int], threads: int, device: str = "cpu",
            budget: Budget = Budget(), choice_batches: Sequence[int] | None = None) -> dict:
    """A text model: token ids [B, seq_len] with a full attention mask; ``one_thread_ms`` at ``choice_batches``
    (the serving batch sizes the precision is chosen at; default the top batch size)."""
    import torch

    def make_inputs(bs: int, generator: Any) -> tuple:
        ids = torch.randint(1000, 2000, (bs, seq_len), generator=generator)
        return ids, torch.ones(bs, seq_len, dtype=torch.int64)

    return measure_artifact(artifact, make_inputs, batch_sizes, threads, device, budget,
                            choice_batch=list(choice_batches or [max(batch_sizes)]))


def run_cli(measure_fn: Callable[..., dict], shape_flag: str, doc: str | None) -> None:
    """The subprocess entry of a measuring module: ARTIFACT, its one shape flag, batch sizes, threads."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("artifact", type=Path)
    parser.add_argument(shape_flag, type=int, required=True, dest="shape",
                        metavar=shape_flag.strip("-").replace("-", "_").upper())
    parser.add_argument("--batch-sizes", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=Budget().seconds,
                        help="measuring budget per batch size, in the forwards' own time")
    parser.add_argument("--choice-batches", default="", help="batch sizes to also time on one thread (text models)")
    args = parser.parse_args()
    extra = {"choice_batches": [int(b) for b in args.choice_batches.split(",")]} if args.choice_batches else {}
    result = measure_fn(args.artifact, args.shape, [int(b) for b in args.batch_sizes.split(",")], args.threads,
                        args.device, budget=Budget(seconds=args.seconds), **extra)
    json.dump(result, sys.stdout)


def main() -> None:
    run_cli(measure, "--seq-len", __doc__)


if __name__ == "__main__":
    main()
