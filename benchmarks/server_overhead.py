"""Per-request server overhead: a trivial model, one client, sequential requests, per protocol.

overhead = client round trip - (preprocess + inference + postprocess) the server reports, i.e.
transport, encoding, routing, queueing and thread hand-offs. Protocols: native (POST /predictions),
v2 (KServe v2 JSON over HTTP) and grpc (KServe v2 gRPC, raw tensor contents as Triton's client
sends them, over one grpc.aio channel). Each also reports its no-op floor: GET /ping for HTTP,
ServerLive for gRPC. The protocols run interleaved in rounds, so a burst of load on a shared
machine hits all of them alike.

    .venv/bin/python benchmarks/server_overhead.py --store file://DIR --model tiny-cls [--requests 3000]
        [--protocols native,v2,grpc]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from server_common import Server, machine  # noqa: E402

from shoal.loadtest.http import Connection, parse_base_url  # noqa: E402
from shoal.loadtest.protocols import grpc_inputs, grpc_model_prefix  # noqa: E402

TEXT = "A short sentence for a trivial model."
ROUND = 100  # requests per protocol per round
STAGES = ("preprocess_ms", "inference_ms", "postprocess_ms")


class HttpPath:
    """native or v2 over the load generator's keep-alive HTTP/1.1 client; timings from the JSON body."""

    def __init__(self, url: str, model_id: str, protocol: str) -> None:
        self.conn = Connection(parse_base_url(url), 30.0)
        if protocol == "native":
            self.path, self.body = f"/predictions/{model_id}", json.dumps({"text": TEXT}).encode()
        else:
            tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXT]}
            self.path, self.body = f"/v2/models/{model_id}/infer", json.dumps({"inputs": [tensor]}).encode()
        self.native = protocol == "native"

    async def call(self) -> bytes:
        resp = await self.conn.request("POST", self.path, self.body)
        assert resp.status == 200, resp.body
        return resp.body

    def timings(self, body: bytes) -> dict:
        doc = json.loads(body)
        return doc["timings"] if self.native else doc["parameters"]["timings"]

    async def floor(self) -> None:
        await self.conn.request("GET", "/ping")

    async def close(self) -> None:
        self.conn.close()


class GrpcPath:
    """KServe v2 gRPC: a pre-serialized ModelInferRequest, bytes in and out; timings from its parameters."""

    def __init__(self, target: str, model_id: str) -> None:
        import grpc
        from tritonclient.grpc import service_pb2 as pb

        self.pb = pb
        self.channel = grpc.aio.insecure_channel(target)
        self.infer = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        self.live = self.channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
        self.body = grpc_model_prefix(model_id) + grpc_inputs(json.dumps({"text": TEXT}).encode())

    async def call(self) -> bytes:
        return await self.infer(self.body, timeout=30.0)  # type: ignore[no-any-return]

    def timings(self, body: bytes) -> dict:
        params = self.pb.ModelInferResponse.FromString(body).parameters
        return {k: v.double_param for k, v in params.items() if k.endswith("_ms")}

    async def floor(self) -> None:
        await self.live(b"", timeout=30.0)

    async def close(self) -> None:
        await self.channel.close()


async def sequential(url: str, grpc_target: str | None, model_id: str, n: int, protocols: list[str]) -> dict:
    paths = {p: GrpcPath(grpc_target, model_id) if p == "grpc" else HttpPath(url, model_id, p)  # type: ignore[arg-type]
             for p in protocols}
    samples: dict[str, dict[str, list[float]]] = {p: {"rtt": [], "compute": [], "inside": [], "floor": []}
                                                  for p in protocols}
    for path in paths.values():  # warm the graph, the connections and both protocols' code paths
        for _ in range(200):
            await path.call()
    for _ in range(max(1, n // ROUND)):
        for name, path in paths.items():
            got = samples[name]
            for _ in range(ROUND):
                t0 = time.perf_counter()
                body = await path.call()
                t1 = time.perf_counter()
                t = path.timings(body)
                got["rtt"].append((t1 - t0) * 1000)
                got["compute"].append(sum(t[k] for k in STAGES))
                got["inside"].append(t["total_ms"])
            for _ in range(ROUND // 4):
                t0 = time.perf_counter()
                await path.floor()
                got["floor"].append((time.perf_counter() - t0) * 1000)
    for path in paths.values():
        await path.close()
    med = statistics.median
    out = {}
    for name, got in samples.items():
        overhead = [r - c for r, c in zip(got["rtt"], got["compute"])]
        out[name] = {"requests": len(got["rtt"]), "rtt_p50_ms": round(med(got["rtt"]), 3),
                     "compute_p50_ms": round(med(got["compute"]), 3), "overhead_p50_ms": round(med(overhead), 3),
                     "overhead_p90_ms": round(sorted(overhead)[int(0.9 * len(overhead))], 3),
                     "server_total_minus_compute_p50_ms": round(med([s - c for s, c in zip(got["inside"],
                                                                                            got["compute"])]), 3),
                     "floor_rtt_p50_ms": round(med(got["floor"]), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", required=True)
    ap.add_argument("--model", default="tiny-cls")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--serve-args", default="--executors 1 --threads 1")
    ap.add_argument("--protocols", default="native,v2,grpc", help="comma-separated: native, v2, grpc")
    ap.add_argument("--client-loop", choices=["uvloop", "asyncio"], default="uvloop",
                    help="the client's event loop (uvloop: the leaner client, so less of the round trip is ours)")
    args = ap.parse_args()
    print(json.dumps({"machine": machine()}))
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    grpc_args = ["--grpc-port", "0"] if "grpc" in protocols else []
    server = Server(["--store", args.store, "--models", args.model, *grpc_args, *args.serve_args.split()])
    try:
        run = asyncio.run
        if args.client_loop == "uvloop":
            import uvloop

            run = uvloop.run
        result = run(sequential(server.url, server.grpc_target, args.model, args.requests, protocols))
        print(json.dumps({"client_loop": args.client_loop, "load1_at_end": round(os.getloadavg()[0], 2), **result}))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
