"""Per-request server overhead: a trivial model, one client, sequential requests.

overhead = client round trip - (preprocess + inference + postprocess) the server reports, i.e.
HTTP, JSON, routing, queueing and thread hand-offs. Also prints the round trip of GET /ping
(the HTTP floor of this client and server) for comparison.

    .venv/bin/python benchmarks/server_overhead.py --store file://DIR --model tiny-cls [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from server_common import Server, machine  # noqa: E402

from shoal.loadtest.http import Connection, parse_base_url  # noqa: E402


async def sequential(url: str, model_id: str, n: int) -> dict:
    conn = Connection(parse_base_url(url), 30.0)
    body = json.dumps({"text": "A short sentence for a trivial model."}).encode()
    rtt, compute, server_total, ping = [], [], [], []
    for i in range(n + 200):
        t0 = time.perf_counter()
        resp = await conn.request("POST", f"/predictions/{model_id}", body)
        t1 = time.perf_counter()
        assert resp.status == 200, resp.body
        if i >= 200:  # the first requests warm the graph and the connection
            t = json.loads(resp.body)["timings"]
            rtt.append((t1 - t0) * 1000)
            compute.append(t["preprocess_ms"] + t["inference_ms"] + t["postprocess_ms"])
            server_total.append(t["total_ms"])
    for _ in range(n):
        t0 = time.perf_counter()
        await conn.request("GET", "/ping")
        ping.append((time.perf_counter() - t0) * 1000)
    conn.close()
    overhead = [r - c for r, c in zip(rtt, compute)]
    med = statistics.median
    return {"requests": n, "rtt_p50_ms": round(med(rtt), 3), "compute_p50_ms": round(med(compute), 3),
            "overhead_p50_ms": round(med(overhead), 3),
            "overhead_p90_ms": round(sorted(overhead)[int(0.9 * len(overhead))], 3),
            "server_total_minus_compute_p50_ms": round(med([s - c for s, c in zip(server_total, compute)]), 3),
            "ping_rtt_p50_ms": round(med(ping), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", required=True)
    ap.add_argument("--model", default="tiny-cls")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--serve-args", default="--executors 1 --threads 1")
    ap.add_argument("--client-loop", choices=["uvloop", "asyncio"], default="uvloop",
                    help="the client's event loop (uvloop: the leaner client, so less of the round trip is ours)")
    args = ap.parse_args()
    print(json.dumps({"machine": machine()}))
    server = Server(["--store", args.store, "--models", args.model, *args.serve_args.split()])
    try:
        run = asyncio.run
        if args.client_loop == "uvloop":
            import uvloop

            run = uvloop.run
        print(json.dumps({"client_loop": args.client_loop,
                          **run(sequential(server.url, args.model, args.requests))}))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
