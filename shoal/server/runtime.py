"""The runtime object a server process holds: settings, registry, scheduler, metrics, and the data plane.

Routes stay thin: they read the body and call ``Runtime.infer``, which acquires the
model (loading it if needed), validates the inputs, queues them for a batch, waits
for the result within the request deadline, and accounts metrics.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass
from typing import Any

from shoal.config import Settings, parse_bytes
from shoal.devices import Device
from shoal.errors import StoreUnavailable
from shoal.server import disk_prefetch
from shoal.server.batcher import Pending, Scheduler
from shoal.server.errors import ApiError, BadRequest, DeadlineExceeded
from shoal.server.executor import DeviceExecutor, loader_pool, executor_layout
from shoal.server.handlers.base import Handler, Parsed
from shoal.server.metrics import Metrics
from shoal.server.registry import BatchDefaults, ModelEntry, Registry
from shoal.server.v2_codec import check_outputs
from shoal.store import store_from_settings
from shoal.store.base import ModelStore

UNKNOWN = "_unknown_"
STORE_RETRY_FIRST_S = 0.5
STORE_RETRY_MAX_S = 15.0
log = logging.getLogger("shoal.server")


@dataclass
class Outcome:
    """What a route needs to answer: the results, their JSON (native protocol) and the timings."""

    entry: ModelEntry
    handler: Handler
    results: list[Any]
    json: str | None
    single: bool
    timings: dict[str, float]


def settle_heap() -> None:
    """Collect once, then move every object alive after start-up out of the cyclic collector's view.

    Why: torch, the catalog and the preloaded models are hundreds of thousands of long-lived
    objects; each full collection walks them all, holding the GIL for tens of milliseconds, and
    shows up as a request-latency tail. Frozen objects are still freed by reference counting.
    """
    gc.collect()
    gc.freeze()


class Runtime:
    def __init__(self, settings: Settings, device: Device, catalog: list[str] | None,
                 store: ModelStore | None = None) -> None:
        self.settings = settings
        self.device = device
        self.store = store or store_from_settings(settings, server=True)
        executors, threads = executor_layout(device, settings.executors, settings.threads)
        self.executor = DeviceExecutor(device, executors, threads)
        self.loader = loader_pool(settings.load_workers)
        self.scheduler = Scheduler(self.executor, settings.max_queue_total, settings.batch_fairness,
                                   settings.prefetch_batches)
        ids = catalog if catalog is not None else _list_or_later(self.store)
        self.metrics = Metrics(len(ids), settings.per_model_metrics_limit)
        batching = BatchDefaults(settings.max_batch_size, settings.max_delay_ms, settings.max_queue_per_model)
        self.registry = Registry(self.store, ids, parse_bytes(settings.memory_budget), self.executor.context,
                                 self.loader, self.metrics, batching, load_slots=settings.load_workers,
                                 max_load_wait_s=settings.max_load_wait_s)
        self.registry.open_catalog = catalog is None
        cache = getattr(self.store, "cache", None)
        if cache is not None:  # the disk tier never removes what is resident or loading
            cache.pinned = lambda: {e.id for e in self.registry.entries.values() if e.state.value in ("ready", "loading")}
        self.capacity = settings.capacity or self.executor.executors * (settings.max_batch_size or 8)
        self.ready = False
        self.not_ready_reason = "preloading models"
        self._prefetch: asyncio.Task | None = None
        self.started = time.time()
        self._gauges()

    def _gauges(self) -> None:
        reg, sch = self.registry, self.scheduler
        self.metrics.gauges(
            shoal_utilization=("In-flight requests / capacity: the autoscaling signal",
                               lambda: reg.inflight / self.capacity),
            shoal_inflight_requests=("Requests being served now", lambda: reg.inflight),
            shoal_capacity=("Requests this process works on at once (executors x max batch)",
                            lambda: self.capacity),
            shoal_queue_depth=("Inputs queued for a batch, all models", lambda: sch.queued_total),
            shoal_executors_busy=("Executor threads running a batch now", lambda: sch.running),
            shoal_device_busy_seconds=("Seconds executor threads spent running batches (a counter)",
                                       lambda: sch.busy_s),
            shoal_models_catalog=("Models this server may serve", lambda: len(reg.entries)),
            shoal_models_resident=("Models loaded now", lambda: reg.resident_count),
            shoal_resident_bytes=("Bytes of resident models (as counted against the budget)",
                                  lambda: reg.resident_bytes),
            shoal_memory_budget_bytes=("The resident-bytes budget", lambda: reg.budget),
            shoal_loads_pending=("Swap-ins waiting for a load slot", lambda: len(reg.loads.waiting)),
        )

    async def start(self) -> None:
        """Wait for the store, then preload; readiness flips when preloading is done.

        Not ready while the store cannot be reached or cannot deliver a model to preload: retry
        with exponential backoff (0.5 s to 15 s), forever. A server started before its store (or
        during an outage, or while the store lists but cannot serve downloads yet) recovers by
        itself instead of crash-looping, marking models failed, or going ready with nothing loaded.
        """
        text = self.settings.preload.strip().lower()
        count = None if text == "all" else 0 if text == "none" else int(text)
        delay = STORE_RETRY_FIRST_S
        try:
            while (reason := await self._start_once(count)) is not None:
                self.not_ready_reason = f"waiting for the model store: {reason}"
                log.warning("%s; next try in %.1f s", self.not_ready_reason, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_S)
        finally:
            self.ready = True
        settle_heap()
        if disk_prefetch.wanted(self.settings.disk_prefetch, self.store):
            self._prefetch = asyncio.get_running_loop().create_task(disk_prefetch.prefetch_catalog(self))

    async def _start_once(self, count: int | None) -> str | None:
        """Reach the store, list and read the catalog, preload: None when done, else why not yet."""
        try:
            await self.registry.run_io(self.store.check)
            if self.registry.open_catalog:
                for model_id in await self.registry.run_io(self.store.list_ids):  # type: ignore[union-attr]
                    self.registry.entries.setdefault(model_id, ModelEntry(model_id))
        except StoreUnavailable as exc:
            return str(exc).splitlines()[0]
        await self.registry.read_manifests()
        deferred = await self.registry.preload(count) if count != 0 else []
        if deferred:
            return f"{len(deferred)} model(s) to preload could not be fetched yet ({', '.join(deferred[:3])})"
        return None

    def shutdown(self) -> None:
        if self._prefetch is not None:
            self._prefetch.cancel()
        self.executor.shutdown()
        self.loader.shutdown(wait=False, cancel_futures=True)

    def label(self, model_id: str) -> str:
        return model_id if model_id in self.registry.entries else UNKNOWN

    def timeout_of(self, header: str | None) -> float:
        """The request deadline: the server's, or shorter if the client asks (header X-Request-Timeout-Ms)."""
        limit = self.settings.request_timeout_s
        if header is None:
            return limit
        try:
            asked_ms = float(header)
        except ValueError:
            raise BadRequest("header X-Request-Timeout-Ms must be a number of milliseconds") from None
        if not asked_ms > 0:  # also refuses "nan"
            raise BadRequest("header X-Request-Timeout-Ms must be positive")
        return max(min(asked_ms / 1000.0, limit), 1e-6)  # a positive value too small for a float still times out

    async def infer(self, model_id: str, body: Any, *, parse: str = "json", encode: bool = True,
                    received: float | None = None, timeout_s: float | None = None) -> Outcome:
        """Run one request end to end. ``parse``: json | query | v2 (how to read ``body``)."""
        t0 = received or time.perf_counter()
        timeout = timeout_s or self.settings.request_timeout_s
        status = 200
        try:
            entry = self.registry.entries.get(model_id)
            resident = entry is not None and entry.state.value == "ready"
            entry = await self.registry.acquire(model_id, timeout)
            load_wait_s = 0.0 if resident else time.perf_counter() - t0
            try:
                handler = entry.handler
                assert handler is not None and entry.batcher is not None
                parsed = _parse(handler, body, parse)
                remaining = timeout - (time.perf_counter() - t0)
                if remaining <= 0:
                    raise DeadlineExceeded(f"model {model_id} gave no result within the request deadline "
                                           f"of {timeout:g} s")
                pending = self.scheduler.submit(entry.batcher, parsed.inputs, parsed.single, encode, remaining,
                                                timeout)
                results, text = await pending.future
            finally:
                self.registry.release(entry)
        except ApiError as exc:
            status = exc.status
            raise
        finally:
            self.metrics.count(self.label(model_id), status)
        total = time.perf_counter() - t0
        self.metrics.model(model_id).request.observe(total)  # type: ignore[attr-defined]
        timings = _timings(pending, total)
        if load_wait_s:
            timings["load_wait_ms"] = round(load_wait_s * 1000, 3)  # this request waited for a swap-in
        return Outcome(entry, handler, results, text, parsed.single, timings)


def _list_or_later(store: ModelStore) -> list[str]:
    """The store's ids now, or none yet if it is unreachable (``start`` lists them once it is back)."""
    try:
        return store.list_ids()
    except StoreUnavailable:
        return []


def _parse(handler: Handler, body: Any, how: str) -> Parsed:
    codec = handler.codec
    if how == "query":
        return codec.parse(codec.from_query(body))
    if how == "v2":
        check_outputs(body, codec.v2_output_names)
        return Parsed(codec.parse_v2(body), single=False)
    return codec.parse(body)


def _timings(p: Pending, total_s: float) -> dict[str, float]:
    t = p.times
    return {"queue_ms": round(p.queue_s * 1000, 3), "preprocess_ms": round(t.preprocess_s * 1000, 3),
            "inference_ms": round(t.inference_s * 1000, 3), "postprocess_ms": round(t.postprocess_s * 1000, 3),
            "total_ms": round(total_s * 1000, 3), "batch_size": p.batch_size}

