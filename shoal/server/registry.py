"""The catalog (every model this server may serve) and the resident set (models loaded now).

Loads happen on first request (or at preload) in loader threads, never on the event
loop; concurrent first requests share one load (single-flight). A memory budget is
kept by evicting the least recently used idle model; a model with requests in
flight is never evicted. A model that fails to load is ``failed`` with its reason
until someone asks to load it again; the others keep serving.
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import Callable

from shoal.errors import StoreUnavailable
from shoal.ids import is_valid_model_id
from shoal.family.keys import family_key
from shoal.server.batcher import BatchGroups, ModelBatcher
from shoal.server.errors import BadRequest, Conflict, NotFound, Unavailable
from shoal.server.handlers import Handler, LoadContext, create_handler
from shoal.server.load_queue import LoadQueue, LoadTicket
from shoal.server.metrics import Metrics
from shoal.server.residency import TensorLedger, model_cost
from shoal.store.base import ModelStore
from shoal.store.manifest import Manifest


class State(str, Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class BatchDefaults:
    """Overrides of the manifest's batching (None: keep the manifest's)."""

    max_batch_size: int | None
    max_delay_ms: float | None
    max_queue_per_model: int


@dataclass(eq=False)
class ModelEntry:
    id: str
    state: State = State.UNLOADED
    manifest: Manifest | None = None
    handler: Handler | None = None
    batcher: ModelBatcher | None = None
    reason: str | None = None
    bytes: int = 0
    last_used: float = 0.0  # monotonic, for LRU
    last_used_wall: float | None = None
    load_ms: float | None = None
    loads: int = 0
    inflight: int = 0
    loading: asyncio.Future | None = None
    ticket: LoadTicket | None = None  # while a load is pending or running
    holds: int = 0  # requests waiting for this model's load: it is not evicted before they get it
    demand: float = 0.0  # requests, each decayed with DEMAND_TAU_S since it came (at demand_t)
    demand_t: float = 0.0

    def demand_at(self, now: float) -> float:
        """Recent demand: a request counts 1 when it arrives and fades with a DEMAND_TAU_S time constant.

        Eviction takes the idle model with the least of it (then the least recently used): under
        Zipf traffic over 1,000 models and room for 92, this keeps ~74 % of requests resident
        against ~66 % for plain LRU, because a one-off call to a rare model no longer pushes out a
        model that is asked for every few seconds (simulated, docs/BENCHMARKS.md `## long tail`).
        """
        return self.demand * math.exp((self.demand_t - now) / DEMAND_TAU_S) if self.demand else 0.0


DEMAND_TAU_S = 60.0  # how long a request keeps its model warm against eviction (time constant)

class Registry:
    def __init__(self, store: ModelStore, catalog: list[str] | None, budget_bytes: int, ctx: LoadContext,
                 loader: ThreadPoolExecutor, metrics: Metrics, batching: BatchDefaults, *, load_slots: int = 1,
                 max_load_wait_s: float = 10.0) -> None:
        self.store = store
        self.open_catalog = catalog is None  # serve whatever the store holds, discovering new ids on demand
        self.entries: dict[str, ModelEntry] = {i: ModelEntry(i) for i in (catalog or [])}
        self.budget = budget_bytes
        self.ctx = ctx
        self.loader = loader
        self.metrics = metrics
        self.batching = batching
        self.resident_bytes = 0
        self.reserved_bytes = 0
        self.inflight = 0
        self._released = asyncio.Event()
        self.loads = LoadQueue(load_slots)
        self.max_load_wait_s = max_load_wait_s
        self.shed = 0  # requests answered 503 because their model could not be swapped in in time
        self.ledger = TensorLedger()  # tensors resident models hold, each counted once
        self.groups = BatchGroups()  # resident family members, which share batches
        self._family_counts: dict[str, int] = {}  # catalog models per family key (an adapter counts 2)
        self._counted: set[str] = set()

    # -- lookups --
    async def entry(self, model_id: str) -> ModelEntry:
        """The catalog entry; 400 for an id that can never be valid, 404 for one we do not serve."""
        e = self.entries.get(model_id)
        if e is not None:
            return e
        if not is_valid_model_id(model_id):
            raise BadRequest(f"invalid model id {model_id[:140]!r}: use letters, digits, '.', '_' or '-'")
        if self.open_catalog and await self.run_io(self.store.exists, model_id):
            return self.entries.setdefault(model_id, ModelEntry(model_id))
        raise NotFound(f"model {model_id!r} is not served here: GET /models lists the models of this server")

    async def acquire(self, model_id: str, timeout_s: float | None = None) -> ModelEntry:
        """A ready entry with one more request in flight (call ``release`` after); loads it if needed.

        A request waits for a swap-in at most ``max_load_wait_s`` and never past ``timeout_s``; when
        the load queue says its model cannot be ready by then, it gets 503 + Retry-After at once (and
        starts no load), so a backlog of loads sheds requests instead of growing without bound.
        """
        e = self.entries.get(model_id)
        if e is not None and e.state is State.READY:  # the hot path: no awaits
            self.metrics.model(e.id).hits.inc()  # type: ignore[attr-defined]
            e.inflight += 1
            self.inflight += 1
            e.last_used = now = time.monotonic()
            e.demand = e.demand_at(now) + 1.0
            e.demand_t = now
            return e
        deadline = time.monotonic() + timeout_s if timeout_s else None
        e = await self.entry(model_id)
        missed = False
        while True:
            if e.state is State.READY:
                mm = self.metrics.model(e.id)
                (mm.misses if missed else mm.hits).inc()  # type: ignore[attr-defined]
                e.inflight += 1
                self.inflight += 1
                e.last_used = now = time.monotonic()
                e.demand = e.demand_at(now) + 1.0
                e.demand_t = now
                return e
            if e.state is State.FAILED:
                raise Unavailable(f"model {e.id} failed to load: {e.reason}")
            missed = True
            remaining = self.max_load_wait_s if deadline is None else deadline - time.monotonic()
            limit = min(remaining, self.max_load_wait_s)
            expected = self.loads.estimate_s(e.ticket)
            if expected > limit:
                self.shed += 1
                self.metrics.load_shed.inc()
                raise Unavailable(f"model {e.id} is not loaded and its swap-in would take about {expected:.2f} s, "
                                  f"more than this request may wait ({max(limit, 0):.2f} s); retry shortly",
                                  retry_after_s=max(1, math.ceil(expected)))
            done = self._start_load(e)
            ticket = e.ticket
            if ticket is not None:
                ticket.waiters += 1
            e.holds += 1  # until this request has the model (no await between the wake-up and inflight += 1)
            try:
                await asyncio.wait_for(asyncio.shield(done), limit)
            except TimeoutError:
                self.shed += 1
                self.metrics.load_shed.inc()
                raise Unavailable(f"model {e.id} was still loading after {limit:.2f} s; it stays loading, retry "
                                  "shortly", retry_after_s=1) from None
            finally:
                e.holds -= 1
                if ticket is not None:
                    ticket.waiters -= 1
                if e.holds == 0 and e.inflight == 0:
                    self._released.set()

    def release(self, e: ModelEntry) -> None:
        e.inflight -= 1
        self.inflight -= 1
        e.last_used = time.monotonic()
        e.last_used_wall = time.time()
        if e.inflight == 0:
            self._released.set()

    # -- loading --
    async def load(self, e: ModelEntry, retry_failed: bool = False) -> None:
        """Make ``e`` ready (or failed). Concurrent callers share one load."""
        if e.state is State.FAILED and retry_failed:
            e.state, e.reason = State.UNLOADED, None
        await asyncio.shield(self._start_load(e))

    def _start_load(self, e: ModelEntry) -> asyncio.Future:
        """The future of ``e``'s load, starting one unless it is running, ready or failed."""
        if e.state in (State.READY, State.FAILED):
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        if e.loading is None:
            e.loading = asyncio.get_running_loop().create_future()
            e.ticket = LoadTicket(e.id)
            e.state = State.LOADING
            asyncio.get_running_loop().create_task(self._load(e, e.loading, e.ticket))
        return e.loading

    async def _load(self, e: ModelEntry, done: asyncio.Future, ticket: LoadTicket) -> None:
        start = time.perf_counter()
        reserved = 0
        slot: float | None = None  # when this load got its slot
        try:
            manifest = e.manifest or await self.run_io(self.store.read_manifest, e.id)
            e.manifest = manifest
            if e.id not in self._counted:
                self._count_family(e.id, manifest)
            cost = model_cost(manifest)
            if cost > self.budget:
                raise RuntimeError(f"needs {cost} bytes, more than the whole memory budget of {self.budget} bytes")
            await self.loads.acquire(ticket)  # the most wanted pending load goes first
            slot = time.perf_counter()
            cost = await self._make_room(e, manifest)
            self.reserved_bytes += cost
            reserved = cost
            handler = await self.run_io(self._load_handler, e.id, manifest)
            e.handler, e.state, e.reason = handler, State.READY, None
            e.bytes = model_cost(manifest)
            e.batcher = self._batcher(e, handler, manifest)
            self.groups.join(e.batcher)
            self.resident_bytes += self.ledger.hold(manifest)
            e.load_ms = (time.perf_counter() - start) * 1000
            e.loads += 1
            e.last_used = time.monotonic()
            self.metrics.model(e.id).load.observe(e.load_ms / 1000)  # type: ignore[attr-defined]
            self.metrics.loads.labels(self.metrics.label(e.id), "ok").inc()
        except _BudgetBusy as exc:
            e.state = State.UNLOADED  # not the model's fault: the next request tries again
            done.set_exception(Unavailable(str(exc), retry_after_s=1))
        except StoreUnavailable as exc:  # the store is down, not the model: stay unloaded, retry on demand
            e.state = State.UNLOADED
            done.set_exception(Unavailable(f"model {e.id} cannot load now: {_one_line(exc)}", retry_after_s=1))
        except Exception as exc:  # any load error marks only this model failed
            e.state, e.reason = State.FAILED, _one_line(exc)
            self.metrics.loads.labels(self.metrics.label(e.id), "failed").inc()
        finally:
            if slot is not None:
                self.loads.release(time.perf_counter() - slot if e.state is State.READY else None)
            self.reserved_bytes -= reserved
            e.loading = None
            e.ticket = None
            if not done.done():
                done.set_result(None)
            else:
                done.exception()  # mark retrieved: waiters may all have gone

    def _load_handler(self, model_id: str, manifest: Manifest) -> Handler:
        folder = self.store.fetch(model_id)  # every file verified against the manifest's sha256
        handler = create_handler(manifest, folder, self.ctx)
        handler.warmup()
        return handler

    def _batcher(self, e: ModelEntry, handler: Handler, manifest: Manifest) -> ModelBatcher:
        b = self.batching
        max_batch = b.max_batch_size or manifest.batching.max_batch_size
        if manifest.static_batch:
            max_batch = min(max_batch, manifest.static_batch)
        delay = b.max_delay_ms if b.max_delay_ms is not None else manifest.batching.max_delay_ms
        return ModelBatcher(e.id, handler, max_batch, delay, b.max_queue_per_model, self.metrics.model(e.id))

    async def _make_room(self, loading: ModelEntry, manifest: Manifest) -> int:
        """Evict idle models, coldest first, until ``manifest`` fits; wait while all are busy. Returns its cost.

        The cost is what the model adds now: tensors a resident model holds (a family's shared
        ones) are free, so it is computed again after every eviction.
        """
        deadline = time.monotonic() + 10.0
        while self.resident_bytes + self.reserved_bytes + (cost := self.ledger.cost(manifest)) > self.budget:
            idle = [x for x in self.entries.values()
                    if x.state is State.READY and x.inflight == 0 and x.holds == 0 and x is not loading]
            if idle:
                now = time.monotonic()  # the coldest first: least recent demand, then least recently used
                self.evict(min(idle, key=lambda x: (x.demand_at(now), x.last_used)))
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _BudgetBusy(f"model {loading.id} cannot load: the memory budget is held by models with "
                                  "requests in flight; retry shortly")
            self._released.clear()
            try:
                await asyncio.wait_for(self._released.wait(), remaining)
            except TimeoutError:
                pass
        return cost

    def evict(self, e: ModelEntry) -> None:
        """Drop a resident, idle model (its weights are freed with the last reference)."""
        if e.state is not State.READY:
            return
        if e.inflight:
            raise Conflict(f"model {e.id} has {e.inflight} requests in flight; retry when they finish")
        handler = e.handler
        if e.batcher is not None:
            self.groups.leave(e.batcher)
        e.handler, e.batcher, e.state = None, None, State.UNLOADED
        if e.manifest is not None:
            self.resident_bytes -= self.ledger.release(e.manifest)
        e.bytes = 0
        self.metrics.model(e.id).evictions.inc()  # type: ignore[attr-defined]
        if handler is not None:
            handler.close()
        del handler
        if not (e.manifest and e.manifest.weights):  # mapped weights are unmapped, not freed to malloc's heap
            self.loader.submit(_trim_heap)

    async def read_manifests(self) -> None:
        """Read every catalog manifest (kind, task, size for listings); an unreadable one marks the model failed."""
        async def one(e: ModelEntry) -> None:
            try:
                e.manifest = await self.run_io(self.store.read_manifest, e.id)  # type: ignore[assignment]
            except StoreUnavailable:
                pass  # transient: read again when the model is first asked for
            except Exception as exc:
                e.state, e.reason = State.FAILED, _one_line(exc)

        await asyncio.gather(*(one(e) for e in list(self.entries.values()) if e.manifest is None))
        self.note_families()

    def note_families(self) -> None:
        """Serve a family through its family graph when the catalog has an adapter of it or two of its members.

        A lone model runs its own graph (a little faster than the family graph); members that can
        meet in one batch, or an adapter (which only the family graph runs), go the family way.
        """
        for e in self.entries.values():
            if e.manifest is not None and e.id not in self._counted:
                self._count_family(e.id, e.manifest)

    def _count_family(self, model_id: str, manifest: Manifest) -> None:
        self._counted.add(model_id)
        key = family_key(manifest)
        if key is not None:
            n = self._family_counts[key] = self._family_counts.get(key, 0) + (2 if manifest.adapter else 1)
            if n >= 2:
                self.ctx.family_keys.add(key)

    # -- preload --
    async def preload(self, count: int | None) -> list[str]:
        """Load the first ``count`` catalog models (None: all) while they fit without eviction.

        Returns the ids the store could not deliver just now (a transient outage), so the caller
        can wait for the store and try them again before it calls the server ready.
        """
        ids = list(self.entries)[: (len(self.entries) if count is None else count)]
        deferred: list[str] = []
        for model_id in ids:
            e = self.entries[model_id]
            if e.state in (State.READY, State.FAILED):
                continue
            try:
                manifest = e.manifest or await self.run_io(self.store.read_manifest, model_id)
            except StoreUnavailable:
                deferred.append(model_id)
                continue
            except Exception as exc:
                e.state, e.reason = State.FAILED, _one_line(exc)
                continue
            e.manifest = manifest
            if self.resident_bytes + self.reserved_bytes + self.ledger.cost(manifest) > self.budget:
                break
            try:
                await self.load(e)
            except Unavailable:
                deferred.append(model_id)  # the store went away mid-load: still unloaded, not failed
            except Exception:
                continue
        return deferred

    async def run_io(self, fn: Callable, *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self.loader, fn, *args)

    def fixed_catalog(self) -> list[str] | None:
        """The catalog's ids, or None when it is open (whatever the store holds): what job queues filter on."""
        return None if self.open_catalog else list(self.entries)

    @property
    def resident_count(self) -> int:
        return sum(1 for e in self.entries.values() if e.state is State.READY)


class _BudgetBusy(Exception):
    pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _trim_heap() -> None:
    """Give freed weight memory back to the OS (glibc keeps it otherwise), so RSS tracks the resident set."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
