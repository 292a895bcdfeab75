"""Asynchronous inference inside one server process: the queue, the job store, workers, metrics.

``shoal serve`` hands ``AsyncService`` to the process host as an extension: one per
runtime, its routes installed on the app (``install``), started after the runtime and
stopped (draining workers) before it; ``shoal worker`` does the same without the
routes. Routes (``shoal/jobs/routes.py``) call ``submit``, ``get`` and ``cancel``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from fastapi import FastAPI

from shoal.errors import ShoalError
from shoal.jobs.metrics import JobMetrics
from shoal.jobs.notify import Notifier
from shoal.jobs.objects import Locations
from shoal.jobs.queue import model_group, open_queue
from shoal.jobs.records import JobRecord, JobState
from shoal.jobs.settings import AsyncSettings, load_async_settings
from shoal.jobs.submit import Intake, Options
from shoal.jobs.worker import Worker, WorkerParts
from shoal.server.errors import Conflict, NotFound, Unavailable
from shoal.server.registry import State
from shoal.server.runtime import Runtime

log = logging.getLogger("shoal.jobs")
STATS_S = 2.0
IO_THREADS = 16  # payload and result I/O mostly waits on the disk or S3, not the CPU: overlap plenty


class AsyncService:
    def __init__(self, runtime: Runtime, settings: AsyncSettings | None = None, workers: bool | None = None) -> None:
        self.rt = runtime
        self.s = settings or load_async_settings()
        base = runtime.settings
        self.queue = open_queue(self.s.queue_uri(base))
        if hasattr(self.queue, "retention_s"):
            self.queue.retention_s = self.s.async_retention_s  # type: ignore[attr-defined]
        self.locations = Locations(self.s.store_uri(base), base.s3_endpoint_url, base.s3_region)
        self.io_pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="shoal-jobs-io")
        self.intake = Intake(self.locations, self.s, self.io)
        self.metrics = JobMetrics(runtime.metrics.registry)
        runtime.metrics.gauges(**self.metrics.sources())  # type: ignore[arg-type]
        self.notifier = Notifier(self.s.async_webhook_secret, self.s.async_webhook_attempts,
                                 self.s.async_webhook_timeout_s)
        run_workers = self.s.async_workers if workers is None else workers
        self.worker = Worker(WorkerParts(runtime, self.queue, self.locations, self.notifier, self.s, self.metrics,
                                         self.io_pool)) if run_workers else None
        self._stats: asyncio.Task | None = None

    async def io(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, fn, *args)

    # -- lifecycle (a process-host extension: shoal.server.process) --
    def install(self, app: FastAPI) -> None:
        """Mount the /async routes on ``app``; they find this service in ``app.state.jobs``."""
        from shoal.jobs.routes import router

        app.state.jobs = self
        app.include_router(router)

    async def start(self) -> None:
        if self.worker is not None:
            self.worker.start()
        self._stats = asyncio.get_running_loop().create_task(self._stats_loop())

    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.stop(self.s.async_drain_s)
        if self._stats is not None:
            self._stats.cancel()
        await self.notifier.close()
        await self.queue.close()
        self.io_pool.shutdown(wait=False)

    async def _stats_loop(self) -> None:
        models = self.rt.registry.fixed_catalog()
        group = model_group(models)
        snap = self.metrics.snapshot
        while True:
            try:
                snap.backlog = await self.queue.backlog(models, group, live_s=10.0)
            except Exception as exc:
                log.warning("reading the job backlog failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
            await asyncio.sleep(STATS_S)

    # -- what the routes call --
    async def submit(self, model_id: str, headers: Mapping[str, str], chunks: AsyncIterator[bytes],
                     opts: Options) -> JobRecord:
        entry = await self.rt.registry.entry(model_id)  # 400 / 404 before a byte is stored
        handler = entry.handler if entry.state is State.READY else None
        rec = await self.intake.accept(model_id, headers, chunks, opts, handler)
        try:
            await self.queue.submit(rec)
        except Exception as exc:
            if rec.inline:
                await self._forget_payload(rec)
            raise Unavailable(f"the job queue cannot take the job: {_line(exc)}", retry_after_s=1) from None
        return rec

    async def get(self, job_id: str) -> JobRecord:
        rec = await self._guard(self.queue.get(job_id))
        if rec is None:
            raise NotFound(f"no job {job_id!r} (unknown, or finished longer ago than the retention)")
        return rec

    async def cancel(self, job_id: str) -> JobRecord:
        rec = await self._guard(self.queue.cancel(job_id))
        if rec is None:
            raise NotFound(f"no job {job_id!r}")
        if rec.state is JobState.CANCELLED:
            if rec.inline:
                await self._forget_payload(rec)
            return rec
        if rec.state is JobState.RUNNING:
            raise Conflict(f"job {job_id} is running: only queued jobs can be cancelled")
        raise Conflict(f"job {job_id} already {rec.state.value}")

    async def _forget_payload(self, rec: JobRecord) -> None:
        try:
            await self.io(self.locations.delete, rec.input_location)
        except Exception as exc:
            log.warning("job %s: cannot delete its payload: %s", rec.id, _line(exc))

    @staticmethod
    async def _guard(coro: Any) -> Any:
        try:
            return await coro
        except ShoalError as exc:
            raise Unavailable(f"the job queue is unavailable: {_line(exc)}", retry_after_s=1) from None


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
