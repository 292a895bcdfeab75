"""Served throughput and fairness: 40 closed-loop clients over N models, against the in-process limit.

Runs, in one go and in this order: the in-process limit (``server_inprocess.py``, its own
process), then one `shoal serve` per executor layout, each driven by closed-loop clients
sending one ~30-word sentence to a random model; optionally an open-loop (Poisson) sweep
for the highest rate whose P90 stays within 100 ms. Prints JSON lines and a summary.

    .venv/bin/python benchmarks/server_throughput.py --store file://DIR --prefix cls \\
        --layouts 1x2,2x1 --clients 40 --seconds 30 [--open-loop 0.6,0.7,0.8,0.9]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from server_common import Server, closed_loop, machine, open_loop  # noqa: E402
from shoal.store import open_store  # noqa: E402


def inprocess_limit(store: str, prefix: str, count: int, batch_sizes: str, seconds: float) -> float:
    cmd = [sys.executable, str(Path(__file__).with_name("server_inprocess.py")), "--store", store, "--prefix",
           prefix, "--count", str(count), "--batch-sizes", batch_sizes, "--seconds", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()
    for line in out:
        print("inprocess", line, flush=True)
    return float(json.loads(out[-1])["limit_seq_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", required=True)
    ap.add_argument("--prefix", default="cls")
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--layouts", default="1x2,2x1", help="EXECUTORSxTHREADS, comma-separated")
    ap.add_argument("--clients", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=8)
    ap.add_argument("--batch-sizes", default="1,2,4,8,16")
    ap.add_argument("--limit", type=float, default=0.0, help="skip the in-process run and use this limit")
    ap.add_argument("--limit-store", default="", help="store whose in-process limit is the reference (default: "
                                                      "--store; e.g. the fp32 store when serving bf16)")
    ap.add_argument("--open-loop", default="", help="fractions of the limit to try as Poisson rates")
    ap.add_argument("--open-seconds", type=float, default=15)
    ap.add_argument("--open-layout", default="2x1", help="the layout the open-loop sweep runs on")
    ap.add_argument("--inprocess-seconds", type=float, default=6)
    ap.add_argument("--limit-again", action="store_true", help="measure the limit again after the served runs")
    ap.add_argument("--serve-args", default="", help="extra `shoal serve` flags")
    args = ap.parse_args()
    print(json.dumps({"machine": machine()}), flush=True)
    store = open_store(args.store)
    ids = [i for i in store.list_ids() if i.startswith(args.prefix)][: args.count]
    manifests = [store.read_manifest(i) for i in ids]
    weights = sum(m.weight_bytes or m.files[m.artifact].size for m in manifests)  # shared graph: its weights file
    ref = args.limit_store or args.store
    limit = args.limit or inprocess_limit(ref, args.prefix, args.count, args.batch_sizes, args.inprocess_seconds)
    rows = []
    for layout in args.layouts.split(","):
        executors, threads = layout.split("x")
        server = Server(["--store", args.store, "--models", ",".join(ids), "--executors", executors, "--threads",
                         threads, *args.serve_args.split()])
        try:
            wall, client_cpu, server_cpu = time.perf_counter(), time.process_time(), server.cpu_seconds()
            res = asyncio.run(closed_loop(server.url, ids, args.clients, args.seconds, args.warmup))
            wall = time.perf_counter() - wall
            cores = {"client_cpu_cores": round((time.process_time() - client_cpu) / wall, 2),  # the load generator's
                     "server_cpu_cores": round((server.cpu_seconds() - server_cpu) / wall, 2)}  # share of the 2 cores
            row = {"layout": layout, "clients": args.clients, **res.summary(), **cores, "limit": limit,
                   "fraction_of_limit": round(res.throughput / limit, 3),
                   "rss_mb": round(server.rss_bytes() / 2**20), "weights_mb": round(weights / 2**20),
                   "above_weights_mb": round((server.rss_bytes() - weights) / 2**20)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            if layout != args.open_layout:
                continue
            for frac in [float(f) for f in args.open_loop.split(",") if f]:
                res = asyncio.run(open_loop(server.url, ids, frac * limit, args.open_seconds))
                print(json.dumps({"layout": layout, "open_loop_fraction": frac, "rate": round(frac * limit, 1),
                                  **res.summary()}), flush=True)
        finally:
            server.stop()
    if not args.limit and args.limit_again:  # the CPU is shared: bracket the served runs with two limits
        again = inprocess_limit(ref, args.prefix, args.count, args.batch_sizes, args.inprocess_seconds)
        mean = (limit + again) / 2
        for row in rows:
            print(json.dumps({"layout": row["layout"], "limit_before": limit, "limit_after": again,
                              "fraction_of_mean_limit": round(row["throughput"] / mean, 3)}), flush=True)


if __name__ == "__main__":
    main()
