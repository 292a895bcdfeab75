"""Async drain rate vs. synchronous throughput on the same server: N queued jobs across M models.

In this order, each step a fresh `shoal serve` with the same flags and one job queue:
  1. sync: closed-loop clients POST /predictions/<random model> (the server benchmark's client);
  2. queue: a server with SHOAL_ASYNC_WORKERS=0 accepts N jobs (the same sentences, random models);
  3. drain: a server with its workers on runs them; the drain rate is N over the span from the
     first job started to the last one finished (from the job records);
  4. sync again: the ratio uses the mean of 1 and 4, so drift of a shared machine cancels.
Prints JSON lines, the ratio drain / sync, and server CPU per item (steadier than rates when the
CPU is shared). Builds tiny models when --store is not given.

    .venv/bin/python benchmarks/async_drain.py --jobs 10000 --models 24 [--queue redis] [--store file://DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from server_common import Server as _Server  # noqa: E402
from server_common import bodies, closed_loop, machine  # noqa: E402
from shoal.jobs.queue import open_queue  # noqa: E402
from shoal.loadtest.http import Connection, parse_base_url  # noqa: E402


class Server(_Server):
    """The server benchmark's process wrapper, also draining stderr (a full pipe would block its logging)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        super().__init__(args, env)
        import threading

        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr or []), daemon=True).start()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process: less sensitive to a shared machine than wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def build_models(root: Path, count: int) -> str:
    """One traced tiny classifier and ``count - 1`` copies under other ids (same files, new manifest id)."""
    from shoal.store.local import LocalStore
    from shoal.trace.tiny import make_tiny_model

    store = LocalStore(root / "store")
    make_tiny_model(store, "m00", task="classification", build_dir=root / "build")
    for i in range(1, count):
        dst = root / "store" / f"m{i:02d}"
        dst.mkdir()
        for f in (root / "store" / "m00").iterdir():
            if f.name != "shoal.json":
                os.link(f, dst / f.name)
        manifest = json.loads((root / "store" / "m00" / "shoal.json").read_text())
        manifest["id"] = f"m{i:02d}"
        (dst / "shoal.json").write_text(json.dumps(manifest))
    return store.uri


async def submit(url: str, ids: list[str], n: int, clients: int) -> tuple[list[str], float]:
    endpoint = parse_base_url(url)
    pool = bodies()
    rng = random.Random(1)
    plan = [(rng.choice(ids), rng.choice(pool)) for _ in range(n)]
    job_ids: list[str] = []
    start = time.perf_counter()

    async def client(k: int) -> None:
        conn = Connection(endpoint, 120.0)
        for model_id, body in plan[k::clients]:
            resp = await conn.request("POST", f"/async/predictions/{model_id}", body)
            if resp.status != 202:
                raise RuntimeError(f"submission refused: {resp.status} {resp.body[:200]!r}")
            job_ids.append(json.loads(resp.body)["job_id"])
        conn.close()

    await asyncio.gather(*(client(k) for k in range(clients)))
    return job_ids, time.perf_counter() - start


async def records(queue_uri: str, job_ids: list[str]) -> list:
    q = open_queue(queue_uri)
    try:
        return [await q.get(i) for i in job_ids]
    finally:
        await q.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", help="file:// store with the models (default: build tiny ones)")
    ap.add_argument("--models", type=int, default=24)
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--queue", default="sqlite", help="sqlite | redis (a redis-server started here)")
    ap.add_argument("--serve-args", default="", help="extra `shoal serve` flags (default: its own)")
    args = ap.parse_args()
    print(json.dumps({"machine": machine(), "jobs": args.jobs, "models": args.models, "queue": args.queue}),
          flush=True)
    work = Path(tempfile.mkdtemp(prefix="shoal-async-bench-"))
    store = args.store or build_models(work, args.models)
    ids = [f"m{i:02d}" for i in range(args.models)] if not args.store else \
        sorted(json.loads(p.read_text())["id"] for p in Path(store.removeprefix("file://")).glob("*/shoal.json"))[
            : args.models]
    redis = None
    if args.queue == "redis":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from redis_server import start_redis

        redis = start_redis(work / "redis")
        queue = redis.url
    else:
        queue = f"sqlite:///{work / 'jobs.sqlite'}"
    env = {"SHOAL_STATE_DIR": str(work / "state"), "SHOAL_ASYNC_QUEUE": queue,
           "SHOAL_ASYNC_STORE": f"file://{work / 'jobs'}"}
    serve = ["--store", store, "--models", ",".join(ids), *args.serve_args.split()]

    def sync_run(label: str) -> tuple[float, float]:
        server = Server(serve, env)
        try:
            asyncio.run(closed_loop(server.url, ids, args.clients, args.warmup, 0))  # warm-up, not recorded
            cpu0 = cpu_s(server.proc.pid)
            res = asyncio.run(closed_loop(server.url, ids, args.clients, args.seconds, 0))
            cpu = (cpu_s(server.proc.pid) - cpu0) / max(1, len(res.latencies_ms))
        finally:
            server.stop()
        print(json.dumps({"step": label, **res.summary(), "server_cpu_ms_per_request": round(cpu * 1000, 3),
                          "load1": round(os.getloadavg()[0], 2)}), flush=True)
        return res.throughput, cpu

    try:
        sync_before = sync_run("sync-before")
        front = Server(serve, {**env, "SHOAL_ASYNC_WORKERS": "0"})
        try:
            job_ids, took = asyncio.run(submit(front.url, ids, args.jobs, args.clients))
        finally:
            front.stop()
        print(json.dumps({"step": "queue", "jobs": len(job_ids), "seconds": round(took, 2),
                          "submissions_per_s": round(len(job_ids) / took, 1)}), flush=True)

        results = work / "jobs" / "results"
        drain = Server(serve, env)
        try:
            cpu0 = cpu_s(drain.proc.pid)
            while sum(1 for _ in results.rglob("*.json")) < len(job_ids) if results.exists() else True:
                time.sleep(0.5)
            drain_cpu = (cpu_s(drain.proc.pid) - cpu0) / len(job_ids)
        finally:
            drain.stop()
        recs = asyncio.run(records(queue, job_ids))
        assert all(r is not None and r.state.value == "succeeded" for r in recs), "every job succeeded"
        first = min(r.started_at for r in recs)
        last = max(r.finished_at for r in recs)
        rate = len(recs) / (last - first)
        waits = sorted(r.finished_at - r.started_at for r in recs)
        print(json.dumps({"step": "drain", "jobs": len(recs), "seconds": round(last - first, 2),
                          "jobs_per_s": round(rate, 1), "redeliveries": sum(r.attempts - 1 for r in recs),
                          "job_p50_ms": round(waits[len(waits) // 2] * 1000, 1),
                          "server_cpu_ms_per_job": round(drain_cpu * 1000, 3),
                          "load1": round(os.getloadavg()[0], 2)}), flush=True)
        sync_after = sync_run("sync-after")
        sync_rps = (sync_before[0] + sync_after[0]) / 2  # before and after: drift on a shared machine cancels
        sync_cpu = (sync_before[1] + sync_after[1]) / 2
        print(json.dumps({"drain_over_sync": round(rate / sync_rps, 3), "sync_rps": round(sync_rps, 1),
                          "cpu_per_item_sync_over_async": round(sync_cpu / drain_cpu, 3),
                          "drain_jobs_per_s": round(rate, 1), "machine_after": machine()}), flush=True)
    finally:
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    main()
