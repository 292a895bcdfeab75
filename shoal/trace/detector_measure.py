"""Measure a detector artifact in a fresh process: resident bytes added by loading it, P50 ms per batch size.

A separate module (run as ``python -m shoal.trace.detector_measure``) so the figures are
not polluted by the exporting process's memory; inputs are [B, 3, S, S] images.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from shoal.trace.measure import rss_bytes


def measure(artifact: Path, size: int, batch_sizes: list[int], threads: int, device: str = "cpu",
            min_runs: int = 5, max_runs: int = 20, budget_s: float = 3.0) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    with torch.inference_mode():
        torch.ones(8, 8) @ torch.ones(8, 8)  # charge the runtime's one-time cost to nobody
    before = rss_bytes()
    t0 = time.perf_counter()
    module = torch.jit.load(str(artifact), map_location=device)
    load_ms = (time.perf_counter() - t0) * 1000
    latency: dict[int, float] = {}
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for bs in batch_sizes:
            x = torch.rand(bs, 3, size, size, generator=gen).to(device)
            for _ in range(2):  # the profiling executor optimises on the first calls
                module(x)
            times: list[float] = []
            start = time.perf_counter()
            while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
                t = time.perf_counter()
                module(x)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - t) * 1000)
            latency[bs] = round(statistics.median(times), 3)
    return {"resident_bytes": max(rss_bytes() - before, 0), "latency_ms_p50": latency, "load_ms": round(load_ms, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--batch-sizes", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    result = measure(args.artifact, args.image_size, [int(b) for b in args.batch_sizes.split(",")], args.threads,
                     args.device)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
