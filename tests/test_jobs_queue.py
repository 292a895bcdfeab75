"""The queue contract, on both backends: SQLite and a real redis-server."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from shoal.jobs.queue import open_queue
from shoal.jobs.records import JobRecord, JobState, new_job_id
from tests.jobs_support import redis_url  # noqa: F401 (fixture)


def record(model: str = "m1", **kw: Any) -> JobRecord:
    job_id = new_job_id()
    return JobRecord(id=job_id, model_id=model, input_location=f"file:///x/payloads/{job_id}.json",
                     output_location=f"file:///x/results/{model}/{job_id}.json",
                     failure_location=f"file:///x/failures/{model}/{job_id}.json",
                     expires_at=time.time() + 60, **kw)


@pytest.fixture(params=["sqlite", "redis"])
def queue_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    base: str = request.getfixturevalue("redis_url")
    return f"{base}?prefix=t{uuid.uuid4().hex[:8]}"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_submit_claim_finish(queue_uri: str) -> None:
    async def go() -> None:
        q = open_queue(queue_uri)
        try:
            recs = [record("m1"), record("m1"), record("m2")]
            for r in recs:
                await q.submit(r)
            got = await q.get(recs[0].id)
            assert got is not None and got.state is JobState.QUEUED and got.model_id == "m1"
            assert await q.get(new_job_id()) is None
            b = await q.backlog(["m1", "m2"], "g", 10)
            assert (b.queued, b.running) == (3, 0)

            ds = await q.claim(["m1"], "w1", limit=10, per_model=8, lease_s=30, wait_s=0.1)
            assert sorted(d.record.id for d in ds) == sorted(r.id for r in recs[:2])
            assert all(d.record.state is JobState.RUNNING and d.record.attempts == 1 for d in ds)
            b = await q.backlog(["m1", "m2"], "g", 10)
            assert (b.queued, b.running) == (1, 2)
            assert await q.claim(["m1"], "w1", 10, 8, 30, 0.05) == []

            assert await q.finish(ds[0], JobState.SUCCEEDED)
            assert not await q.finish(ds[0], JobState.SUCCEEDED), "a second finish is a no-op"
            assert await q.finish(ds[1], JobState.FAILED, "boom", dead_letter=True)
            done = await q.get(ds[1].record.id)
            assert done is not None and done.state is JobState.FAILED and done.error == "boom" and done.dead_letter
            b = await q.backlog(["m1", "m2"], "g", 10)
            assert (b.queued, b.running) == (1, 0)
            assert (await q.backlog(None, "g", 10)).total == 1
        finally:
            await q.close()

    run(go())


def test_cancel_only_queued(queue_uri: str) -> None:
    async def go() -> None:
        q = open_queue(queue_uri)
        try:
            a, b = record(), record()
            await q.submit(a)
            await q.submit(b)
            cancelled = await q.cancel(a.id)
            assert cancelled is not None and cancelled.state is JobState.CANCELLED
            ds = await q.claim(["m1"], "w", 10, 8, 30, 0.1)
            assert [d.record.id for d in ds] == [b.id], "a cancelled job is never delivered"
            running = await q.cancel(b.id)
            assert running is not None and running.state is JobState.RUNNING
            assert await q.cancel(new_job_id()) is None
            assert (await q.backlog(["m1"], "g", 10)).total == 1
        finally:
            await q.close()

    run(go())


def test_retry_backoff_and_attempts(queue_uri: str) -> None:
    async def go() -> None:
        q = open_queue(queue_uri)
        try:
            r = record()
            await q.submit(r)
            [d] = await q.claim(["m1"], "w", 10, 8, 30, 0.1)
            assert await q.retry(d, 0.4, "flaky")
            assert (await q.get(r.id)).state is JobState.QUEUED  # type: ignore[union-attr]
            assert await q.claim(["m1"], "w", 10, 8, 30, 0.05) == [], "not before its backoff"
            await asyncio.sleep(0.5)
            [d2] = await q.claim(["m1"], "w", 10, 8, 30, 0.5)
            assert d2.record.attempts == 2 and d2.record.error == "flaky"
            assert not await q.retry(d, 0, "stale token"), "the first delivery lost its claim"
            assert await q.retry(d2, 0, None, count=False)
            [d3] = await q.claim(["m1"], "w", 10, 8, 30, 0.5)
            assert d3.record.attempts == 2, "an uncounted retry gives the attempt back"
        finally:
            await q.close()

    run(go())


def test_lapsed_lease_is_redelivered_once(queue_uri: str) -> None:
    async def go() -> None:
        q = open_queue(queue_uri)
        try:
            r, s = record(), record()
            await q.submit(r)
            await q.submit(s)
            ds = await q.claim(["m1"], "dead", 10, 8, lease_s=0.3, wait_s=0.1)
            assert len(ds) == 2
            await asyncio.sleep(0.45)
            await q.renew([d for d in ds if d.record.id == s.id], 0.3)  # s's worker is alive
            again = await q.claim(["m1"], "alive", 10, 8, lease_s=0.3, wait_s=0.2)
            assert [d.record.id for d in again] == [r.id] and again[0].record.attempts == 2
            stale = next(d for d in ds if d.record.id == r.id)
            assert not await q.finish(stale, JobState.SUCCEEDED), "the dead worker's claim is void"
            assert await q.finish(again[0], JobState.SUCCEEDED)
            assert [d.record.id for d in await q.claim(["m1"], "alive", 10, 8, 30, 0.1)] in ([], [s.id])
        finally:
            await q.close()

    run(go())


def test_grouping_per_model_and_open_catalog(queue_uri: str) -> None:
    async def go() -> None:
        q = open_queue(queue_uri)
        try:
            for m in ["a", "b", "a", "b", "a"]:
                await q.submit(record(m))
            ds = await q.claim(None, "w", limit=3, per_model=3, lease_s=30, wait_s=0.5)
            assert len(ds) >= 3
            assert len({d.record.model_id for d in ds[:3]}) >= 1
        finally:
            await q.close()

    run(go())


def test_workers_and_notifications(queue_uri: str) -> None:
    async def go() -> None:
        q = open_queue(queue_uri)
        try:
            await q.heartbeat("w1", "g1")
            await q.heartbeat("w2", "g1")
            await q.heartbeat("w3", "g2")
            assert (await q.backlog(["m1"], "g1", 10)).workers == 2
            await q.leave("w2", "g1")
            assert (await q.backlog(["m1"], "g1", 10)).workers == 1

            r = record(notify_success=["http://127.0.0.1:9/hook"])
            await q.submit(r)
            [d] = await q.claim(["m1"], "w1", 10, 8, 30, 0.5)
            assert await q.finish(d, JobState.SUCCEEDED)
            pending = await q.unnotified(time.time() + 1, 10)
            assert [p.id for p in pending] == [r.id]
            await q.notified(r.id)
            assert await q.unnotified(time.time() + 1, 10) == []
        finally:
            await q.close()

    run(go())


def test_bad_queue_uri() -> None:
    from shoal.errors import UsageError

    with pytest.raises(UsageError, match="use sqlite"):
        open_queue("kafka://x")
