"""Helpers for the server benchmarks: start `shoal serve`, drive it with closed- or open-loop clients.

The client is the load-test stage's minimal keep-alive HTTP/1.1 client (``shoal.loadtest.http``),
so the generator takes as little of the shared CPU as possible.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shoal.loadtest.http import Connection, HttpError, parse_base_url
from shoal.samples import sentences

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return f"nproc={os.cpu_count()} cpu={cpu!r} load1={os.getloadavg()[0]:.2f}"


class Server:
    """A `shoal serve` subprocess on a free loopback port."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "shoal.cli", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True)
        assert self.proc.stderr
        self.grpc_target: str | None = None  # host:port when started with --grpc-port
        for line in self.proc.stderr:
            if "listening on " in line:
                self.url = line.rsplit("listening on ", 1)[1].strip()
                if "--grpc-port" not in args:
                    break
            elif "KServe v2 gRPC at " in line:
                self.grpc_target = line.rsplit(" at ", 1)[1].strip()
                break
        else:
            raise RuntimeError(f"server exited: {self.proc.wait()}")
        while httpx.get(self.url + "/v2/health/ready", timeout=30).status_code != 200:
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far (from /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def models(self) -> list[dict]:
        return httpx.get(self.url + "/models", timeout=30).json()["models"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def bodies(n: int = 512, seed: int = 7) -> list[bytes]:
    """~30-word sentences, encoded once."""
    return [json.dumps({"text": s}).encode() for s in sentences(n, seed=seed)]


@dataclass
class RunResult:
    latencies_ms: list[float] = field(default_factory=list)
    done_at: list[float] = field(default_factory=list)  # completion times, for the windowed fairness figure
    per_model: dict[str, int] = field(default_factory=dict)
    per_client: list[int] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q / 100 * len(data)))] if data else float("nan")

    def windowed_ratio(self, window_s: float = 2.0) -> float | None:
        """P99 / P50 of each latency divided by the median latency of its completion window.

        On a shared CPU the capacity drifts over seconds, and with closed-loop clients the
        latency follows it (Little's law); dividing by the window's median removes that drift
        and leaves what the server decides: whether some requests wait longer than others.
        """
        if not self.done_at:
            return None
        start = min(self.done_at)
        windows: dict[int, list[float]] = {}
        for t, lat in zip(self.done_at, self.latencies_ms):
            windows.setdefault(int((t - start) / window_s), []).append(lat)
        medians = {k: sorted(v)[len(v) // 2] for k, v in windows.items()}
        norm = sorted(lat / medians[int((t - start) / window_s)] for t, lat in zip(self.done_at, self.latencies_ms))
        return norm[int(0.99 * len(norm))] / norm[len(norm) // 2]

    def summary(self) -> dict:
        counts = list(self.per_model.values()) or [0]
        return {"requests": len(self.latencies_ms), "errors": self.errors, "throughput": round(self.throughput, 2),
                "p50_ms": round(self.pct(50), 2), "p90_ms": round(self.pct(90), 2), "p99_ms": round(self.pct(99), 2),
                "p99_over_p50": round(self.pct(99) / self.pct(50), 3) if self.latencies_ms else None,
                "p99_over_p50_windowed": round(self.windowed_ratio() or 0, 3),
                "per_model_min_max": [min(counts), max(counts)],
                "per_client_min_max": [min(self.per_client or [0]), max(self.per_client or [0])]}


async def closed_loop(url: str, model_ids: list[str], clients: int, seconds: float, warmup_s: float,
                      seed: int = 0) -> RunResult:
    """``clients`` connections, each sending one request at a time to a random model."""
    endpoint = parse_base_url(url)
    pool = bodies()
    result = RunResult(per_client=[0] * clients)
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + seconds

    async def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        conn = Connection(endpoint, 120.0)
        while True:
            model_id = rng.choice(model_ids)
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            resp = await conn.request("POST", f"/predictions/{model_id}", rng.choice(pool))
            t1 = time.perf_counter()
            if t0 >= measure_from and t1 <= stop_at:
                if resp.status != 200:
                    result.errors += 1
                    continue
                result.latencies_ms.append((t1 - t0) * 1000)
                result.done_at.append(t1)
                result.per_model[model_id] = result.per_model.get(model_id, 0) + 1
                result.per_client[i] += 1
        conn.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    result.seconds = seconds
    return result


async def open_loop(url: str, model_ids: list[str], rate: float, seconds: float, seed: int = 0) -> RunResult:
    """Poisson arrivals at ``rate``/s; latency counts from the scheduled send time (no coordinated omission)."""
    endpoint = parse_base_url(url)
    pool = bodies()
    rng = random.Random(seed)
    idle: list[Connection] = []
    result = RunResult()
    tasks = []

    async def one(scheduled: float, model_id: str, body: bytes) -> None:
        conn = idle.pop() if idle else Connection(endpoint, 120.0)
        try:
            resp = await conn.request("POST", f"/predictions/{model_id}", body)
        except HttpError:
            result.errors += 1
            return
        done = time.perf_counter()
        idle.append(conn)
        if resp.status != 200:
            result.errors += 1
            return
        result.latencies_ms.append((done - scheduled) * 1000)
        result.done_at.append(done)
        result.per_model[model_id] = result.per_model.get(model_id, 0) + 1

    start = time.perf_counter()
    t = start
    while t < start + seconds:
        t += rng.expovariate(rate)
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(t, rng.choice(model_ids), rng.choice(pool))))
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.close()
    result.seconds = seconds
    return result
