"""Workers: pull jobs for this server's models, run them, write results, tell the webhooks.

One claim loop per process keeps up to ``concurrency`` jobs in hand (claimed in
same-model groups so they share batches), one task per job runs it, and a renewal
loop keeps their leases alive. What can fail again and succeed (the model is loading
or overloaded, the store hiccupped, a batch-mate broke the batch) is retried with
backoff until ``max_attempts``, then dead-lettered; what cannot (bad input for the
model, a timeout) fails at once. A SIGTERM drains: no new claims, in-flight jobs
finish within the drain time, and the rest go back to the queue at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from shoal.errors import ShoalError
from shoal.jobs.execute import execute, parse_payload, result_bytes
from shoal.jobs.grouped import Grouped
from shoal.jobs.metrics import JobMetrics
from shoal.jobs.notify import Notifier
from shoal.jobs.objects import LocalObjects, Locations
from shoal.jobs.queue import Delivery, JobQueue, model_group
from shoal.jobs.records import JobRecord, JobState
from shoal.jobs.settings import AsyncSettings
from shoal.server.errors import ApiError, DeadlineExceeded, Overloaded
from shoal.server.runtime import Runtime

log = logging.getLogger("shoal.jobs")
PERMANENT = (400, 404, 413, 422)  # the job's input is wrong for this model: running it again cannot help
NOTIFY_GRACE_S = 120.0  # a finished job unconfirmed this long lost its notifier (the process died)


class Permanent(Exception):
    """This job can never succeed as submitted."""


class Settled(Exception):
    """A previous delivery wrote this job's outcome and deleted its payload, then died before recording it."""

    def __init__(self, state: JobState, error: str | None = None, dead: bool = False) -> None:
        super().__init__(state.value)
        self.state, self.error, self.dead = state, error, dead


@dataclass
class WorkerParts:
    runtime: Runtime
    queue: JobQueue
    locations: Locations
    notifier: Notifier
    settings: AsyncSettings
    metrics: JobMetrics
    io: ThreadPoolExecutor


class Worker:
    def __init__(self, parts: WorkerParts) -> None:
        self.p = parts
        s, rt = parts.settings, parts.runtime
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # jobs in hand: enough to fill batches of every model while others read payloads and write results
        self.concurrency = s.async_concurrency or max(32, 8 * rt.capacity)
        self.per_model = rt.settings.max_batch_size or 8
        self.active: dict[str, Delivery] = {}
        self.stopping = False
        self._room = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._background: set[asyncio.Task] = set()
        self._jobs: dict[str, asyncio.Task] = {}
        self._notifying: set[str] = set()
        # claim in chunks, not one job per freed slot: each claim is a transaction
        self.claim_chunk = max(1, min(self.per_model, self.concurrency // 4))
        # local files: calls ride together in few trips; S3: every call its own trip, many at once
        batch, trips = (64, 2) if isinstance(parts.locations.root, LocalObjects) else (1, 16)
        self._reader = Grouped(parts.io, self._read_payload, batch, trips)
        self._writer: Grouped[tuple[str, bytes, str | None]] = Grouped(parts.io, self._write, batch, trips)

    def models(self) -> list[str] | None:
        return self.p.runtime.registry.fixed_catalog()

    @property
    def group(self) -> str:
        return model_group(self.models())

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for coro in (self._claim_loop(), self._renew_loop(), self._chores_loop()):
            self._keep(loop.create_task(coro))

    def _keep(self, task: asyncio.Task) -> asyncio.Task:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _later(self, coro: Any) -> None:
        """Work after a job's end (webhooks), waited for when draining."""
        task = self._keep(asyncio.get_running_loop().create_task(coro))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- claiming --
    async def _claim_loop(self) -> None:
        rt, s = self.p.runtime, self.p.settings
        while not rt.ready and not self.stopping:
            await asyncio.sleep(0.05)
        while not self.stopping:
            room = self.concurrency - len(self.active)
            if room <= 0 or (self.active and room < self.claim_chunk):
                self._room.clear()
                await self._room.wait()
                continue
            try:
                got = await self.p.queue.claim(self.models(), self.consumer, room, self.per_model, s.async_lease_s,
                                               s.async_poll_s)
            except Exception as exc:
                log.warning("claiming jobs failed: %s; retrying in 1 s", _line(exc))
                await asyncio.sleep(1.0)
                continue
            for d in got:
                self.active[d.record.id] = d
                self._jobs[d.record.id] = asyncio.get_running_loop().create_task(self._run(d))

    async def _renew_loop(self) -> None:
        lease = self.p.settings.async_lease_s
        while True:
            await asyncio.sleep(lease / 3)
            try:
                await self.p.queue.renew(list(self.active.values()), lease)
            except Exception as exc:
                log.warning("renewing job leases failed: %s", _line(exc))

    async def _chores_loop(self) -> None:
        """Heartbeat (instance count), redeliver orphaned webhooks, purge old records."""
        s, q = self.p.settings, self.p.queue
        last_sweep = 0.0
        while True:
            try:
                await q.heartbeat(self.consumer, self.group)
                if time.monotonic() - last_sweep > 30:
                    last_sweep = time.monotonic()
                    for rec in await q.unnotified(time.time() - NOTIFY_GRACE_S, 50):
                        self._notify(rec)
                    await q.purge(time.time() - s.async_retention_s)
            except Exception as exc:
                log.warning("job queue chores failed: %s", _line(exc))
            await asyncio.sleep(2.0)

    # -- one job --
    async def _run(self, d: Delivery) -> None:
        rec = d.record
        try:
            try:
                await self._attempt(d)
            except ShoalError as exc:  # the queue itself failed (finishing, say): one line, not a traceback
                log.warning("job %s: %s; it will run again", rec.id, _line(exc))
                await self._retry_or_fail(d, _line(exc))
            except Exception as exc:  # a bug: the job is retried, the worker goes on
                log.exception("job %s: unexpected error", rec.id)
                await self._retry_or_fail(d, f"internal error: {_line(exc)}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the queue is unreachable: the lease lapses and another delivery runs it
            log.warning("job %s: cannot give it back to the queue: %s", rec.id, _line(exc))
        finally:
            self.active.pop(rec.id, None)
            self._jobs.pop(rec.id, None)
            self.p.metrics.snapshot.running_here = len(self.active)
            self._room.set()

    async def _attempt(self, d: Delivery) -> None:
        rec, s = d.record, self.p.settings
        self.p.metrics.snapshot.running_here = len(self.active)
        if rec.attempts > rec.max_attempts:
            await self._fail(d, f"dead-lettered after {rec.max_attempts} deliveries that never finished (the "
                                f"worker stopped each time); last error: {rec.error or 'none'}", dead=True)
            return
        if time.time() > rec.expires_at:
            await self._fail(d, f"expired: not started within its TTL of {rec.expires_at - rec.created_at:g} s")
            return
        self.p.metrics.wait.observe(max(0.0, time.time() - rec.created_at))
        started = time.perf_counter()
        try:
            body = await self._reader(rec)
            single, text = await execute(self.p.runtime, rec.model_id, body, rec.timeout_s)
            await self._writer((rec.output_location, result_bytes(rec.id, rec.model_id, single, text),
                                rec.input_location if rec.inline else None))
        except Settled as done:
            if await self.p.queue.finish(d, done.state, done.error, dead_letter=done.dead):
                self.p.metrics.finished.labels(done.state.value).inc()
                await self._finished(d.record)
            return
        except Permanent as exc:
            await self._fail(d, str(exc))
            return
        except DeadlineExceeded:
            await self._fail(d, f"invocation timeout: no result within {rec.timeout_s:g} s")
            return
        except Overloaded as exc:  # our own backlog is full: not the job's fault, not an attempt
            await self._requeue(d, 0.5, exc.message, count=False)
            return
        except ApiError as exc:
            if exc.status in PERMANENT:
                await self._fail(d, exc.message)
            else:
                await self._retry_or_fail(d, exc.message)
            return
        except ShoalError as exc:  # the store or the queue: transient by nature
            await self._retry_or_fail(d, _line(exc))
            return
        if await self.p.queue.finish(d, JobState.SUCCEEDED):
            self.p.metrics.run.observe(time.perf_counter() - started)
            self.p.metrics.finished.labels("succeeded").inc()
            await self._finished(d.record)

    def _read_payload(self, rec: JobRecord) -> Any:
        try:
            raw = self.p.locations.read(rec.input_location, self.p.settings.max_payload_bytes)
        except ShoalError:
            settled = self._settled(rec) if rec.inline else None
            if settled is not None:
                raise settled from None
            raise
        try:
            return parse_payload(raw, rec.content_type, rec.media_params)
        except ValueError as exc:
            raise Permanent(str(exc)) from None

    def _write(self, item: tuple[str, bytes, str | None]) -> None:
        """The outcome object, then the payload it makes useless (so a missing payload means: settled)."""
        location, data, payload = item
        objects, key = self.p.locations.resolve(location)
        objects.put(key, data)
        if payload is not None:
            self.p.locations.delete(payload)

    def _settled(self, rec: JobRecord) -> Settled | None:
        """The outcome a previous delivery left, if any (its payload is gone, so it got that far)."""
        loc = self.p.locations
        try:
            loc.size(rec.output_location)
            return Settled(JobState.SUCCEEDED)
        except ShoalError:
            pass
        try:
            summary = json.loads(loc.read(rec.failure_location, 1 << 20))
            return Settled(JobState.FAILED, str(summary.get("error")), bool(summary.get("dead_letter")))
        except (ShoalError, ValueError, AttributeError):
            return None

    async def _retry_or_fail(self, d: Delivery, error: str) -> None:
        rec = d.record
        if rec.attempts >= rec.max_attempts:
            await self._fail(d, f"dead-lettered after {rec.attempts} attempts; last error: {error}", dead=True)
        else:
            await self._requeue(d, self.p.settings.async_backoff_s * 2 ** (rec.attempts - 1), error)

    async def _requeue(self, d: Delivery, delay_s: float, error: str, count: bool = True) -> None:
        if await self.p.queue.retry(d, delay_s, error, count=count):
            self.p.metrics.retries.inc()

    async def _fail(self, d: Delivery, error: str, dead: bool = False) -> None:
        rec = d.record
        summary = {"job_id": rec.id, "model_id": rec.model_id, "error": error, "attempts": rec.attempts,
                   "dead_letter": dead}
        try:
            await self._writer((rec.failure_location, json.dumps(summary).encode(),
                                rec.input_location if rec.inline else None))
        except Exception as exc:  # the record still says why; the failure object is a convenience
            log.warning("job %s: cannot write its failure object: %s", rec.id, _line(exc))
        if await self.p.queue.finish(d, JobState.FAILED, error, dead_letter=dead):
            self.p.metrics.finished.labels("failed").inc()
            await self._finished(d.record)

    async def _finished(self, rec: JobRecord) -> None:
        if rec.targets():
            self._notify(rec)

    def _notify(self, rec: JobRecord) -> None:
        if rec.id in self._notifying:
            return
        self._notifying.add(rec.id)

        async def send() -> None:
            try:
                ok = await self.p.notifier.notify(rec)
                self.p.metrics.webhooks.labels("ok" if ok else "failed").inc()
                await self.p.queue.notified(rec.id)  # delivered, or given up after every retry
            except Exception as exc:
                log.warning("job %s: webhook delivery failed: %s", rec.id, _line(exc))
            finally:
                self._notifying.discard(rec.id)

        self._later(send())

    # -- draining --
    async def stop(self, drain_s: float) -> None:
        """Stop claiming, let running jobs finish for up to ``drain_s``, give the rest back to the queue."""
        self.stopping = True
        self._room.set()
        deadline = time.monotonic() + drain_s
        jobs = list(self._jobs.values())
        if jobs:
            await asyncio.wait(jobs, timeout=max(0.0, deadline - time.monotonic()))
        left = [d for d in self.active.values()]
        for task in list(self._jobs.values()):
            task.cancel()
        for d in left:
            try:
                await self.p.queue.retry(d, 0.0, d.record.error, count=False)
            except Exception as exc:
                log.warning("job %s: cannot give it back (its lease will lapse): %s", d.record.id, _line(exc))
        background = [t for t in self._background if not t.done()]  # webhooks
        if background:
            await asyncio.wait(background, timeout=max(1.0, deadline - time.monotonic()))
        for task in list(self._tasks):
            task.cancel()
        try:
            await self.p.queue.leave(self.consumer, self.group)
        except Exception:
            pass


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
