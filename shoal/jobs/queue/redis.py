"""The queue on Redis Streams: one stream per model, one consumer group of workers.

A worker reads new entries of its models' streams with XREADGROUP; an entry stays in
the group's pending list until its job finishes, and a worker renews its claim by
XCLAIMing its own entries (which resets their idle time). Entries idle longer than the
lease belong to a dead worker: XAUTOCLAIM hands them to a live one. The scripts in
``redis_scripts`` make every state change atomic.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from shoal.errors import UsageError
from shoal.jobs.queue import redis_scripts as lua
from shoal.jobs.queue.base import Backlog, Delivery, JobQueue
from shoal.jobs.records import JobRecord, JobState

GROUP = "workers"
DISCOVER_S = 5.0  # how often a worker of every model looks for new model streams
POOL = 32  # connections per process


class RedisQueue(JobQueue):
    def __init__(self, uri: str, retention_s: float = 7 * 86400) -> None:
        import redis.asyncio as aioredis

        parsed = urlparse(uri)
        query = dict(parse_qsl(parsed.query))
        self.prefix = query.pop("prefix", "shoal")
        self.uri = uri
        self.retention_s = retention_s
        clean = urlunparse(parsed._replace(query=urlencode(query)))
        try:
            # a blocking pool: 100+ jobs in hand share the connections and wait for one, never fail for lack
            pool = aioredis.BlockingConnectionPool.from_url(clean, max_connections=POOL, timeout=30,
                                                            decode_responses=True, health_check_interval=30)
            self.redis = aioredis.Redis(connection_pool=pool)
        except ValueError as exc:
            raise UsageError(f"queue {uri!r}: {exc}") from None
        self._scripts = {name: self.redis.register_script(getattr(lua, name))
                         for name in ("SUBMIT", "START", "FINISH", "RETRY", "PROMOTE", "CANCEL", "NOTIFIED",
                                      "RENEW")}
        self._groups: set[str] = set()
        self._streams: list[str] = []
        self._discovered = 0.0
        self._reclaimed = 0.0
        self._promoted = 0.0
        self._seq = itertools.count(1)

    # -- keys --
    def _job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _stream(self, model_id: str) -> str:
        return f"{self.prefix}:stream:{model_id}"

    @property
    def _backlog(self) -> str:
        return f"{self.prefix}:backlog"

    @property
    def _delayed(self) -> str:
        return f"{self.prefix}:delayed"

    @property
    def _notify(self) -> str:
        return f"{self.prefix}:notify"

    async def _call(self, coro: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await coro
        except RedisError as exc:
            from shoal.errors import StoreError

            raise StoreError(f"job queue {self.uri}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
                from None

    async def _ensure_group(self, model_id: str) -> None:
        from redis.exceptions import ResponseError

        stream = self._stream(model_id)
        if stream in self._groups:
            return
        try:
            await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    # -- the interface --
    async def submit(self, rec: JobRecord) -> None:
        async def run() -> None:
            await self._ensure_group(rec.model_id)
            flat = [x for kv in rec.to_flat().items() for x in kv]
            await self._scripts["SUBMIT"](keys=[self._job(rec.id), self._stream(rec.model_id), self._backlog],
                                          args=[rec.model_id, rec.id, *flat])

        await self._call(run())

    async def get(self, job_id: str) -> JobRecord | None:
        data = await self._call(self.redis.hgetall(self._job(job_id)))
        return JobRecord.from_flat(data) if data else None

    async def cancel(self, job_id: str) -> JobRecord | None:
        out = await self._call(self._scripts["CANCEL"](
            keys=[self._job(job_id), self._backlog, self._delayed],
            args=[time.time(), int(self.retention_s), job_id, self.prefix]))
        return JobRecord.from_flat(_pairs(out)) if out else None

    async def _model_streams(self, models: list[str] | None) -> list[str]:
        if models is not None:
            for m in models:
                await self._ensure_group(m)
            return [self._stream(m) for m in models]
        if time.monotonic() - self._discovered > DISCOVER_S:
            found = [k async for k in self.redis.scan_iter(match=f"{self.prefix}:stream:*", count=1000)]
            self._streams = sorted(found)
            for s in self._streams:
                await self._ensure_group(s[len(self.prefix) + len(":stream:"):])
            self._discovered = time.monotonic()
        return self._streams

    async def claim(self, models: list[str] | None, consumer: str, limit: int, per_model: int,
                    lease_s: float, wait_s: float) -> list[Delivery]:
        if limit <= 0:
            return []
        return await self._call(self._claim(models, consumer, limit, per_model, lease_s, wait_s))  # type: ignore

    async def _claim(self, models: list[str] | None, consumer: str, limit: int, per_model: int,
                     lease_s: float, wait_s: float) -> list[Delivery]:
        now = time.monotonic()
        if now - self._promoted > 0.2:
            self._promoted = now
            await self._scripts["PROMOTE"](keys=[self._delayed], args=[time.time(), self.prefix, 500])
        streams = await self._model_streams(models)
        if not streams:
            await asyncio.sleep(wait_s)
            return []
        entries: list[tuple[str, str, str | None]] = []  # (stream, entry id, job id)
        if now - self._reclaimed > lease_s / 4:
            self._reclaimed = now
            entries += await self._reclaim(streams, consumer, lease_s, limit)
        if not entries:
            count = max(1, min(per_model, limit))
            reply = await self.redis.xreadgroup(GROUP, consumer, {s: ">" for s in streams}, count=count,
                                                block=max(1, int(wait_s * 1000)))
            for stream, items in reply or []:
                for entry, fields in items:
                    entries.append((stream, entry, (fields or {}).get("job")))
        return await self._start(entries, consumer)

    async def _reclaim(self, streams: list[str], consumer: str, lease_s: float,
                       limit: int) -> list[tuple[str, str, str | None]]:
        """Entries whose worker went silent for longer than a lease."""
        claimed: list[tuple[str, str]] = []
        idle_ms = int(lease_s * 1000)
        for stream in streams:
            ids = await self.redis.xautoclaim(stream, GROUP, consumer, idle_ms, "0-0", count=limit, justid=True)
            claimed += [(stream, entry) for entry in ids or []]
            if len(claimed) >= limit:
                break
        if not claimed:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, entry in claimed:
                pipe.xrange(stream, entry, entry)
            found = await pipe.execute()
        # an entry deleted while pending comes back empty: _start acknowledges it
        return [(stream, entry, (items[0][1] or {}).get("job") if items else None)
                for (stream, entry), items in zip(claimed, found)]

    async def _start(self, entries: list[tuple[str, str, str | None]], consumer: str) -> list[Delivery]:
        if not entries:
            return []
        now = time.time()
        started: list[Delivery] = []
        tokens = [f"{consumer}:{next(self._seq)}" for _ in entries]  # consumer names are unique
        async with self.redis.pipeline(transaction=False) as pipe:
            for (stream, entry, job_id), token in zip(entries, tokens):
                if job_id is None:  # entry deleted while pending: just acknowledge it
                    pipe.xack(stream, GROUP, entry)
                    continue
                await self._scripts["START"](keys=[self._job(job_id), stream], args=[GROUP, entry, token, now],
                                            client=pipe)
            replies = await pipe.execute()
        i = 0
        for (stream, entry, job_id), token in zip(entries, tokens):
            reply = replies[i]
            i += 1
            if job_id is not None and reply:
                started.append(Delivery(JobRecord.from_flat(json.loads(reply)), token, f"{stream} {entry}"))
        return started

    async def renew(self, deliveries: list[Delivery], lease_s: float) -> None:
        if not deliveries:
            return

        async def run() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                for d in deliveries:
                    stream, entry = d.handle.split(" ", 1)
                    consumer = d.token.rsplit(":", 1)[0]
                    await self._scripts["RENEW"](keys=[self._job(d.record.id), stream],
                                                 args=[GROUP, consumer, entry, d.token], client=pipe)
                await pipe.execute()

        await self._call(run())

    async def finish(self, d: Delivery, state: JobState, error: str | None = None,
                     dead_letter: bool = False) -> bool:
        rec = d.record
        stream = d.handle.split(" ", 1)[0]
        finished = time.time()
        notify = bool(rec.notify_success if state is JobState.SUCCEEDED else
                      rec.notify_failure if state is JobState.FAILED else [])
        ok = await self._call(self._scripts["FINISH"](
            keys=[self._job(rec.id), stream, self._backlog, self._notify],
            args=[GROUP, d.token, state.value, finished, error or "", "1" if dead_letter else "0",
                  "1" if notify else "0", rec.model_id, int(self.retention_s), rec.id]))
        if ok:
            rec.state, rec.finished_at, rec.error, rec.dead_letter = state, finished, error, dead_letter
        return bool(ok)

    async def retry(self, d: Delivery, delay_s: float, error: str | None, count: bool = True) -> bool:
        rec = d.record
        stream = d.handle.split(" ", 1)[0]
        ok = await self._call(self._scripts["RETRY"](
            keys=[self._job(rec.id), stream, self._delayed],
            args=[GROUP, d.token, time.time() + max(0.0, delay_s), error or "", "1" if count else "0", rec.id]))
        if ok:
            rec.state, rec.error = JobState.QUEUED, error
            self._promoted = 0.0 if delay_s <= 0 else self._promoted
        return bool(ok)

    async def backlog(self, models: list[str] | None, group: str, live_s: float) -> Backlog:
        async def run() -> Backlog:
            if models is None:
                counts = await self.redis.hgetall(self._backlog)
                total = sum(int(v) for v in counts.values())
                names = [s[len(self.prefix) + 8:] for s in self._streams]
            else:
                values = await self.redis.hmget(self._backlog, models) if models else []
                total = sum(int(v) for v in values if v)
                names = models
            running = 0
            if names:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for m in names:
                        pipe.xpending(self._stream(m), GROUP)
                    for reply in await pipe.execute(raise_on_error=False):
                        if isinstance(reply, dict):
                            running += int(reply.get("pending", 0))
            key = f"{self.prefix}:workers:{group}"
            workers = await self.redis.zcount(key, time.time() - live_s, "+inf")
            running = min(running, total)
            return Backlog(max(0, total - running), running, int(workers))

        result: Backlog = await self._call(run())
        return result

    async def heartbeat(self, consumer: str, group: str) -> None:
        key = f"{self.prefix}:workers:{group}"
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {consumer: now})
            pipe.zremrangebyscore(key, "-inf", now - 3600)
            await self._call(pipe.execute())

    async def leave(self, consumer: str, group: str) -> None:
        await self._call(self.redis.zrem(f"{self.prefix}:workers:{group}", consumer))

    async def unnotified(self, finished_before: float, limit: int) -> list[JobRecord]:
        ids = await self._call(self.redis.srandmember(self._notify, limit))
        out = []
        for job_id in ids or []:
            data = await self._call(self.redis.hgetall(self._job(job_id)))
            if not data:
                await self._call(self.redis.srem(self._notify, job_id))
                continue
            rec = JobRecord.from_flat(data)
            if rec.finished_at is not None and rec.finished_at < finished_before:
                out.append(rec)
        return out

    async def notified(self, job_id: str) -> None:
        await self._call(self._scripts["NOTIFIED"](keys=[self._job(job_id), self._notify],
                                                   args=[job_id, int(self.retention_s)]))

    async def purge(self, finished_before: float) -> int:
        return 0  # finished records carry a Redis TTL of the retention

    async def close(self) -> None:
        await self.redis.aclose()


def _pairs(flat: list[Any]) -> dict[str, Any]:
    return dict(zip(flat[::2], flat[1::2]))
