"""Runs a load spec in one process or several, and measures the generator's ceiling.

Why worker processes: one Python event loop tops out at some thousands of
requests per second. Each worker runs its share of clients (or of the Poisson
rate: a sum of Poisson processes is Poisson) and ships its recorder back; the
parent merges them, so percentiles stay pooled over every sample.
"""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable

from shoal.errors import ShoalError
from shoal.loadtest import aio
from shoal.loadtest.engine import LoadSpec, now, run_closed, run_open, run_single
from shoal.loadtest.http import Endpoint
from shoal.loadtest.payload import load_payloads
from shoal.loadtest.stats import Recorder
from shoal.loadtest.targets import Routes

ProgressFn = Callable[[str, int, int], None]


@dataclass
class RunResult:
    stages: list[Recorder]
    workers: int

    @property
    def overall(self) -> Recorder:
        total = Recorder("overall")
        for r in self.stages:
            total.merge(r)
        total.offered_rate = None
        return total


def _split(n: int, parts: int, i: int) -> int:
    return n // parts + (1 if i < n % parts else 0)


def _share(spec: LoadSpec, workers: int, i: int) -> LoadSpec:
    stages = [replace(s, rate=s.rate / workers) for s in spec.stages]
    requests = None if spec.requests is None else _split(spec.requests, workers, i)
    return replace(spec, clients=_split(spec.clients, workers, i), stages=stages, requests=requests,
                   max_connections=max(1, spec.max_connections // workers))


async def _run_here(routes: Routes, payload: str | None, spec: LoadSpec, t0: float,
                    progress: ProgressFn | None, offset: int) -> list[Recorder]:
    payloads = load_payloads(payload, seed=spec.seed) if payload else None
    try:
        if spec.single:
            return [await run_single(routes, payloads, spec, t0, progress)]
        if spec.open_loop:
            return await run_open(routes, payloads, spec, t0, progress, offset)
        return [await run_closed(routes, payloads, spec, t0, progress, offset)]
    finally:
        if spec.protocol == "grpc":
            from shoal.loadtest.grpc_client import close_channels

            await close_channels()


def _worker(i: int, routes: Routes, payload: str | None, spec: LoadSpec, t0: float, queue: "mp.Queue") -> None:
    def progress(phase: str, ok: int, err: int) -> None:
        queue.put(("progress", i, phase, ok, err))

    try:
        recs = aio.run(_run_here(routes, payload, spec, t0, progress, offset=i * 100_000))
        queue.put(("result", i, [r.to_dict() for r in recs]))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        queue.put(("failed", i, f"{type(exc).__name__}: {exc}"))


def run_load(routes: Routes, payload: str | None, spec: LoadSpec, workers: int = 1,
             progress: ProgressFn | None = None) -> RunResult:
    """Run ``spec`` and return one merged recorder per stage."""
    if workers <= 1 or spec.single:
        recs = aio.run(_run_here(routes, payload, spec, now() + 0.05, progress, 0))
        return RunResult(recs, 1)
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    t0 = now() + 1.5  # spawn + imports take about a second; everyone starts together
    procs = [ctx.Process(target=_worker, args=(i, routes, payload, _share(spec, workers, i), t0, queue),
                         daemon=True) for i in range(workers)]
    for p in procs:
        p.start()
    live: dict[int, tuple[str, int, int]] = {}
    results: dict[int, list[Recorder]] = {}
    try:
        while len(results) < workers:
            kind, i, *rest = queue.get()
            if kind == "progress":
                live[i] = (rest[0], rest[1], rest[2])
                if progress:
                    phases = {ph for ph, _, _ in live.values()}
                    progress(min(phases) if len(phases) > 1 else phases.pop(),
                             sum(v[1] for v in live.values()), sum(v[2] for v in live.values()))
            elif kind == "result":
                results[i] = [Recorder.from_dict(d) for d in rest[0]]
            else:
                raise ShoalError(f"load worker {i} failed: {rest[0]}")
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    merged = results[0]
    for i in range(1, workers):
        for mine, theirs in zip(merged, results[i]):
            mine.merge(theirs)
    return RunResult(merged, workers)


def measure_ceiling(endpoints: dict[str, Endpoint], clients: int, seconds: float, workers: int = 1,
                    path: str = "/ping") -> Recorder:
    """Closed-loop GETs of a no-op route on every endpoint: the rate the generator can reach."""
    routes = Routes(dict(endpoints), {f"noop@{name}": name for name in endpoints})
    spec = LoadSpec(clients=max(clients, 1), duration_s=seconds, warmup_s=min(0.5, seconds / 4),
                    method="GET", path_template=path, timeout_s=10.0)
    return run_load(routes, None, spec, workers).overall


class NoopServer:
    """The no-op server (shoal.loadtest.noop) in a child process, for ``--self-test``."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> "NoopServer":
        self.proc = subprocess.Popen([sys.executable, "-m", "shoal.loadtest.noop", "--port", "0"],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.__exit__()
            raise ShoalError("the no-op server for --self-test did not start")
        self.port = int(line.split()[-1])
        return self

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port, "127.0.0.1")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


def self_test(clients: int, seconds: float, workers: int = 1) -> Recorder:
    """The generator's ceiling against its own no-op server on this machine."""
    with NoopServer() as srv:
        time.sleep(0.05)
        return measure_ceiling({"noop": srv.endpoint}, clients, seconds, workers)
