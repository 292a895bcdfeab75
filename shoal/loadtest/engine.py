"""The generator's hot loops: closed loop (N clients), open loop (Poisson), single.

Why measure open-loop latency from the *intended* send time: if the generator or
its connection pool falls behind, the wait is part of what a real client would
see; measuring from the actual send would hide it (coordinated omission).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Union

from shoal.loadtest.http import Connection, Endpoint, HttpError
from shoal.loadtest.payload import JSON_TYPE, Payloads
from shoal.loadtest.protocols import encode, grpc_model_prefix
from shoal.loadtest.stats import Recorder
from shoal.loadtest.targets import ModelChooser, Routes

if TYPE_CHECKING:
    from shoal.loadtest.grpc_client import GrpcConnection

now = time.perf_counter  # CLOCK_MONOTONIC on Linux: comparable across worker processes


@dataclass
class Stage:
    """One step of an open-loop run: ``rate`` requests/s for ``duration_s`` seconds."""

    rate: float
    duration_s: float
    label: str = ""
    max_error_rate: float | None = None  # None: the run's --max-error-rate


@dataclass
class LoadSpec:
    clients: int = 40
    stages: list[Stage] = field(default_factory=list)  # non-empty = open loop
    duration_s: float | None = 60.0
    requests: int | None = None
    warmup_s: float = 0.0
    models: str = "random"
    timeout_s: float = 30.0
    seed: int = 0
    max_connections: int = 1024
    single: str | None = None  # sequential | random
    method: str = "POST"
    path_template: str = "/predictions/{model}"
    protocol: str = "native"  # native | v2 | grpc (shoal/loadtest/protocols.py)

    @property
    def open_loop(self) -> bool:
        return bool(self.stages)


Progress = Callable[[str, int, int], None]  # (phase, ok, errors)
AnyConnection = Union[Connection, "GrpcConnection"]


def open_connection(endpoint: Endpoint, spec: LoadSpec) -> AnyConnection:
    """A keep-alive HTTP connection, or a gRPC call handle on the process's channel to ``endpoint``."""
    if spec.protocol == "grpc":
        from shoal.loadtest.grpc_client import GrpcConnection

        return GrpcConnection(endpoint, spec.timeout_s)
    return Connection(endpoint, spec.timeout_s)


class Requester:
    """Builds and sends one request for a model and records its outcome."""

    def __init__(self, routes: Routes, payloads: Payloads | None, spec: LoadSpec) -> None:
        self.routes = routes
        self.spec = spec
        self.bodies: dict[str, list[bytes]] = {}
        self.types: dict[str, bytes] = {}
        self.paths: dict[str, str] = {}
        encoded: dict[str | None, list[bytes]] = {}  # per task: every model of a task shares one pool
        for m in routes.models:
            task = routes.tasks.get(m)
            content_type = payloads.content_type(task) if payloads else JSON_TYPE
            if payloads and task not in encoded:
                encoded[task] = encode(spec.protocol, payloads.bodies(task), content_type)
            self.bodies[m] = encoded[task] if payloads else []
            # v2 and gRPC carry images inside their own JSON / protobuf bodies
            self.types[m] = (content_type if spec.protocol == "native" else JSON_TYPE).encode()
            self.paths[m] = spec.path_template.format(model=m)
        # gRPC: the serialized model_name field, prepended to the shared pool body at send time
        self.prefix = {m: grpc_model_prefix(m) for m in routes.models} if spec.protocol == "grpc" else {}
        self.counter = 0
        self.live_ok = 0
        self.live_err = 0

    def body(self, model: str) -> bytes | None:
        bodies = self.bodies[model]
        if not bodies:
            return None
        self.counter += 1
        return bodies[self.counter % len(bodies)]

    async def send(self, conn: AnyConnection, model: str, start: float, rec: Recorder | None) -> None:
        body = self.body(model)
        if self.prefix and body is not None:
            body = self.prefix[model] + body
        try:
            resp = await conn.request(self.spec.method, self.paths[model], body, self.types[model])
        except HttpError as exc:
            self.live_err += 1
            if rec is not None:
                rec.record_error(model, exc.kind, str(exc), start, now())
            return
        end = now()
        if 200 <= resp.status < 300:
            self.live_ok += 1
            if rec is not None:
                rec.record_ok(model, start, end)
        else:
            self.live_err += 1
            if rec is not None:
                rec.record_error(model, f"status_{resp.status}", resp.body[:200].decode("utf-8", "replace"),
                                 start, end)


async def _progress_loop(req: Requester, phase: Callable[[], str], progress: Progress | None) -> None:
    if progress is None:
        return
    while True:
        await asyncio.sleep(0.5)
        progress(phase(), req.live_ok, req.live_err)


async def run_closed(routes: Routes, payloads: Payloads | None, spec: LoadSpec, t0: float,
                     progress: Progress | None = None, client_offset: int = 0) -> Recorder:
    """``spec.clients`` clients, each sending its next request as soon as the last returns."""
    rec = Recorder("run")
    req = Requester(routes, payloads, spec)
    measure_from = t0 + spec.warmup_s
    deadline = measure_from + spec.duration_s if spec.duration_s else float("inf")
    budget = [spec.requests if spec.requests is not None else -1]

    async def client(i: int) -> None:
        chooser = ModelChooser(spec.models, routes.models, seed=spec.seed * 1000 + client_offset + i,
                               offset=client_offset + i)
        conns: dict[str, AnyConnection] = {}
        try:
            while True:
                start = now()
                if start >= deadline:
                    return
                measuring = start >= measure_from
                if measuring and budget[0] >= 0:
                    if budget[0] == 0:
                        return
                    budget[0] -= 1
                model = chooser.next()
                server = routes.model_server[model]
                conn = conns.get(server)
                if conn is None:
                    conn = conns[server] = open_connection(routes.endpoints[server], spec)
                await req.send(conn, model, start, rec if measuring else None)
        finally:
            for c in conns.values():
                c.close()

    await _sleep_until(t0)
    ticker = asyncio.create_task(_progress_loop(req, lambda: "warmup" if now() < measure_from else "measure",
                                                progress))
    try:
        await asyncio.gather(*(client(i) for i in range(spec.clients)))
    finally:
        ticker.cancel()
    if progress:
        progress("done", req.live_ok, req.live_err)
    return rec


class _Pool:
    """Idle connections per server for the open loop; opens more up to a cap."""

    def __init__(self, endpoint: Endpoint, spec: LoadSpec, cap: int) -> None:
        self.endpoint, self.spec, self.cap = endpoint, spec, cap
        self.idle: list[AnyConnection] = []
        self.opened = 0
        self.waiting = 0
        self.free = asyncio.Condition()

    async def get(self) -> AnyConnection:
        if self.idle:
            return self.idle.pop()
        if self.opened < self.cap:
            self.opened += 1
            return open_connection(self.endpoint, self.spec)
        async with self.free:
            self.waiting += 1
            try:
                while not self.idle:
                    await self.free.wait()
            finally:
                self.waiting -= 1
            return self.idle.pop()

    async def put(self, conn: AnyConnection) -> None:
        self.idle.append(conn)
        if self.waiting:  # notify only when someone waits: the common path takes no lock
            async with self.free:
                self.free.notify()

    def close(self) -> None:
        for c in self.idle:
            c.close()


async def run_open(routes: Routes, payloads: Payloads | None, spec: LoadSpec, t0: float,
                   progress: Progress | None = None, client_offset: int = 0) -> list[Recorder]:
    """Poisson arrivals at each stage's rate; one recorder per stage (warmup is unrecorded)."""
    req = Requester(routes, payloads, spec)
    pools = {name: _Pool(ep, spec, spec.max_connections) for name, ep in routes.endpoints.items()}
    chooser = ModelChooser(spec.models, routes.models, seed=spec.seed * 1000 + client_offset, offset=client_offset)
    rng = random.Random(spec.seed * 7919 + client_offset)
    stages = list(spec.stages)
    if spec.warmup_s > 0:
        stages.insert(0, Stage(stages[0].rate, spec.warmup_s, "warmup"))
    recorders: list[Recorder] = []
    tasks: set[asyncio.Task] = set()
    phase = ["warmup" if spec.warmup_s > 0 else "measure"]

    async def fire(model: str, intended: float, rec: Recorder | None) -> None:
        pool = pools[routes.model_server[model]]
        conn = await pool.get()
        try:
            await req.send(conn, model, intended, rec)
        finally:
            await pool.put(conn)

    await _sleep_until(t0)
    ticker = asyncio.create_task(_progress_loop(req, lambda: phase[0], progress))
    t = t0
    try:
        for stage in stages:
            rec = None if stage.label == "warmup" else Recorder(stage.label or f"{stage.rate:g} rps", stage.rate,
                                                                stage.max_error_rate)
            if rec is not None:
                recorders.append(rec)
                phase[0] = rec.label
            end = t + stage.duration_s
            while True:
                t += rng.expovariate(stage.rate) if stage.rate > 0 else stage.duration_s
                if t >= end:
                    t = end
                    break
                delay = t - now()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                elif rec is not None:
                    rec.note_lag(-delay)
                task = asyncio.create_task(fire(chooser.next(), t, rec))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        ticker.cancel()
        for p in pools.values():
            p.close()
    if progress:
        progress("done", req.live_ok, req.live_err)
    return recorders


async def run_single(routes: Routes, payloads: Payloads | None, spec: LoadSpec, t0: float,
                     progress: Progress | None = None) -> Recorder:
    """One request at a time, ``spec.requests`` per model (the reference's curl loop)."""
    rec = Recorder(f"single-{spec.single}")
    req = Requester(routes, payloads, spec)
    per_model = spec.requests or 10
    order = [m for m in routes.models for _ in range(per_model)]
    if spec.single == "random":
        random.Random(spec.seed).shuffle(order)
    conns: dict[str, AnyConnection] = {}
    ticker = asyncio.create_task(_progress_loop(req, lambda: "measure", progress))
    try:
        for model in order:
            server = routes.model_server[model]
            if server not in conns:
                conns[server] = open_connection(routes.endpoints[server], spec)
            conn = conns[server]
            await req.send(conn, model, now(), rec)
    finally:
        ticker.cancel()
        for c in conns.values():
            c.close()
    if progress:
        progress("done", req.live_ok, req.live_err)
    return rec


async def _sleep_until(t: float) -> None:
    delay = t - now()
    if delay > 0:
        await asyncio.sleep(delay)
