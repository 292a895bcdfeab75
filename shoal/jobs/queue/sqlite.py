"""The embedded queue: one SQLite file (WAL) shared by every process on the host.

All statements run on one thread per process, which owns the connection. Writes are
grouped: whatever operations arrived while the previous transaction ran commit
together in the next one (group commit), so a busy worker pays one transaction per
batch of jobs, not per job. ``BEGIN IMMEDIATE`` serialises writers across processes.
WAL with ``synchronous=NORMAL`` survives a crash of any process (the acceptance test
kills the server with SIGKILL); a power cut may lose the last commits.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from shoal.errors import UsageError
from shoal.jobs.grouped import settle
from shoal.jobs.queue.base import Backlog, Delivery, JobQueue
from shoal.jobs.records import JobRecord, JobState

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  model_id TEXT NOT NULL,
  state TEXT NOT NULL,
  available_at REAL NOT NULL,
  lease_until REAL,
  owner TEXT,
  notify_pending INTEGER NOT NULL DEFAULT 0,
  finished_at REAL,
  record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs(state, available_at);
CREATE INDEX IF NOT EXISTS jobs_model ON jobs(model_id, state);
CREATE INDEX IF NOT EXISTS jobs_notify ON jobs(notify_pending) WHERE notify_pending = 1;
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS workers (consumer TEXT PRIMARY KEY, grp TEXT NOT NULL, seen REAL NOT NULL);
"""
_MODELS = "model_id IN (SELECT value FROM json_each(?))"

Op = Callable[[sqlite3.Connection], Any]


class SqliteQueue(JobQueue):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.uri = f"sqlite:///{path}"
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="shoal-jobs-db")
        self._conn: sqlite3.Connection | None = None
        self._ops: list[tuple[Op, asyncio.Future]] = []
        self._flushing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._seq = itertools.count(1)

    # -- the connection thread --
    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(SCHEMA)
            except (OSError, sqlite3.Error) as exc:
                raise UsageError(f"cannot open the job queue {self.uri}: {exc}") from None
            self._conn = conn
        return self._conn

    async def _read(self, fn: Op) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(self._connect()))

    async def _write(self, fn: Op) -> Any:
        """Run ``fn`` inside the next group transaction; returns its result."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        fut = loop.create_future()
        self._ops.append((fn, fut))
        if not self._flushing:
            self._flushing = True
            loop.run_in_executor(self._thread, self._flush)
        return await fut

    def _flush(self) -> None:
        """Connection thread: commit every queued operation in one transaction, until none are left."""
        loop = self._loop
        assert loop is not None
        while True:
            ops = self._take()
            if not ops:
                return
            results: list[tuple[asyncio.Future, Any, BaseException | None]] = []
            try:
                conn = self._connect()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for fn, fut in ops:
                        conn.execute("SAVEPOINT op")
                        try:
                            results.append((fut, fn(conn), None))
                            conn.execute("RELEASE op")
                        except Exception as exc:  # one bad operation must not undo its neighbours
                            conn.execute("ROLLBACK TO op")
                            conn.execute("RELEASE op")
                            results.append((fut, None, exc))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except Exception as exc:
                results = [(fut, None, exc) for _, fut in ops]
            loop.call_soon_threadsafe(settle, results)

    def _take(self) -> list[tuple[Op, asyncio.Future]]:
        # list swaps are atomic under the GIL; the loop appends, this thread drains
        ops, self._ops = self._ops, []
        if not ops:
            self._flushing = False
            if self._ops:  # raced with an append that saw _flushing still True
                self._flushing = True
                ops, self._ops = self._ops, []
        return ops

    # -- the interface --
    async def submit(self, rec: JobRecord) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO jobs (id, model_id, state, available_at, record) VALUES (?, ?, ?, ?, ?)",
                      (rec.id, rec.model_id, rec.state.value, rec.created_at, _dump(rec)))

        await self._write(op)
        self.wake()

    async def get(self, job_id: str) -> JobRecord | None:
        row = await self._read(lambda c: c.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone())
        return _load(row[0]) if row else None

    async def cancel(self, job_id: str) -> JobRecord | None:
        def op(c: sqlite3.Connection) -> JobRecord | None:
            row = c.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if not row:
                return None
            rec = _load(row[0])
            if rec.state is JobState.QUEUED:
                rec.state, rec.finished_at = JobState.CANCELLED, time.time()
                c.execute("UPDATE jobs SET state = ?, finished_at = ?, record = ? WHERE id = ?",
                          (rec.state.value, rec.finished_at, _dump(rec), job_id))
            return rec

        result: JobRecord | None = await self._write(op)
        return result

    async def claim(self, models: list[str] | None, consumer: str, limit: int, per_model: int,
                    lease_s: float, wait_s: float) -> list[Delivery]:
        deadline = time.monotonic() + wait_s
        while True:
            got: list[Delivery] = []
            # an idle poll only reads: the write lock is taken when there is something to claim
            if await self._read(lambda c: self._anything(c, models)):
                got = await self._write(lambda c: self._claim(c, models, consumer, limit, per_model, lease_s))
            remaining = deadline - time.monotonic()
            if got or remaining <= 0 or limit <= 0:
                return got
            event = self._wake_event()
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass

    @staticmethod
    def _anything(c: sqlite3.Connection, models: list[str] | None) -> bool:
        now = time.time()
        where, args = ("", []) if models is None else (f" AND {_MODELS}", [json.dumps(models)])
        return c.execute(f"SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'queued' AND available_at <= ?{where}) "
                         f"OR EXISTS (SELECT 1 FROM jobs WHERE state = 'running' AND lease_until < ?{where})",
                         (now, *args, now, *args)).fetchone()[0] == 1

    def _claim(self, c: sqlite3.Connection, models: list[str] | None, consumer: str, limit: int, per_model: int,
               lease_s: float) -> list[Delivery]:
        now = time.time()
        where, args = ("", []) if models is None else (f" AND {_MODELS}", [json.dumps(models)])
        scan = max(limit * 4, 64)
        # lapsed leases first (their worker died: these waited longest), then ready jobs, oldest first
        rows = c.execute(f"SELECT id, model_id, record FROM jobs WHERE state = 'running' AND lease_until < ?{where} "
                         "ORDER BY available_at LIMIT ?", (now, *args, scan)).fetchall()
        rows += c.execute(f"SELECT id, model_id, record FROM jobs WHERE state = 'queued' AND available_at <= ?{where} "
                          "ORDER BY available_at LIMIT ?", (now, *args, scan)).fetchall()
        chosen = _group(rows, limit, per_model)
        out = []
        for job_id, _, raw in chosen:
            rec = _load(raw)
            rec.state, rec.started_at, rec.attempts = JobState.RUNNING, now, rec.attempts + 1
            token = f"{consumer}:{next(self._seq)}"  # the consumer name is unique: a counter suffices
            c.execute("UPDATE jobs SET state = 'running', owner = ?, lease_until = ?, record = ? WHERE id = ?",
                      (token, now + lease_s, _dump(rec), job_id))
            out.append(Delivery(rec, token))
        return out

    async def renew(self, deliveries: list[Delivery], lease_s: float) -> None:
        if not deliveries:
            return

        def op(c: sqlite3.Connection) -> None:
            until = time.time() + lease_s
            c.executemany("UPDATE jobs SET lease_until = ? WHERE id = ? AND owner = ? AND state = 'running'",
                          [(until, d.record.id, d.token) for d in deliveries])

        await self._write(op)

    async def finish(self, d: Delivery, state: JobState, error: str | None = None,
                     dead_letter: bool = False) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            rec = self._owned(c, d)
            if rec is None:
                return False
            rec.state, rec.finished_at, rec.error, rec.dead_letter = state, time.time(), error, dead_letter
            d.record = rec
            c.execute("UPDATE jobs SET state = ?, owner = NULL, lease_until = NULL, finished_at = ?, "
                      "notify_pending = ?, record = ? WHERE id = ?",
                      (state.value, rec.finished_at, 1 if rec.targets() else 0, _dump(rec), rec.id))
            return True

        ok: bool = await self._write(op)
        return ok

    async def retry(self, d: Delivery, delay_s: float, error: str | None, count: bool = True) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            rec = self._owned(c, d)
            if rec is None:
                return False
            rec.state, rec.error = JobState.QUEUED, error
            if not count:
                rec.attempts -= 1
            d.record = rec
            c.execute("UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, available_at = ?, "
                      "record = ? WHERE id = ?", (time.time() + delay_s, _dump(rec), rec.id))
            return True

        ok: bool = await self._write(op)
        if ok and delay_s <= 0:
            self.wake()
        return ok

    @staticmethod
    def _owned(c: sqlite3.Connection, d: Delivery) -> JobRecord | None:
        row = c.execute("SELECT record FROM jobs WHERE id = ? AND state = 'running' AND owner = ?",
                        (d.record.id, d.token)).fetchone()
        return _load(row[0]) if row else None

    async def backlog(self, models: list[str] | None, group: str, live_s: float) -> Backlog:
        def op(c: sqlite3.Connection) -> Backlog:
            where, args = ("", []) if models is None else (f" AND {_MODELS}", [json.dumps(models)])
            counts = dict(c.execute(f"SELECT state, count(*) FROM jobs WHERE state IN ('queued', 'running'){where} "
                                    "GROUP BY state", args).fetchall())
            workers = c.execute("SELECT count(*) FROM workers WHERE grp = ? AND seen >= ?",
                                (group, time.time() - live_s)).fetchone()[0]
            return Backlog(counts.get("queued", 0), counts.get("running", 0), workers)

        result: Backlog = await self._read(op)
        return result

    async def heartbeat(self, consumer: str, group: str) -> None:
        await self._write(lambda c: c.execute("INSERT OR REPLACE INTO workers (consumer, grp, seen) VALUES (?, ?, ?)",
                                              (consumer, group, time.time())))

    async def leave(self, consumer: str, group: str) -> None:
        await self._write(lambda c: c.execute("DELETE FROM workers WHERE consumer = ?", (consumer,)))

    async def unnotified(self, finished_before: float, limit: int) -> list[JobRecord]:
        rows = await self._read(lambda c: c.execute(
            "SELECT record FROM jobs WHERE notify_pending = 1 AND finished_at < ? LIMIT ?",
            (finished_before, limit)).fetchall())
        return [_load(r[0]) for r in rows]

    async def notified(self, job_id: str) -> None:
        await self._write(lambda c: c.execute("UPDATE jobs SET notify_pending = 0 WHERE id = ?", (job_id,)))

    async def purge(self, finished_before: float) -> int:
        def op(c: sqlite3.Connection) -> int:
            c.execute("DELETE FROM workers WHERE seen < ?", (finished_before,))
            return c.execute("DELETE FROM jobs WHERE finished_at < ? AND state IN ('succeeded', 'failed', "
                             "'cancelled') AND notify_pending = 0", (finished_before,)).rowcount

        n: int = await self._write(op)
        return n

    def _wake_event(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def wake(self) -> None:
        if self._event is not None:
            self._event.set()

    async def close(self) -> None:
        def shut(_: Any) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await self._read(shut)
        finally:
            self._thread.shutdown(wait=False)


def _group(rows: list[tuple[str, str, str]], limit: int, per_model: int) -> list[tuple[str, str, str]]:
    """Oldest first, but up to ``per_model`` jobs of a model together (they can share a batch)."""
    by_model: dict[str, list[tuple[str, str, str]]] = {}
    for row in rows:
        by_model.setdefault(row[1], []).append(row)
    out: list[tuple[str, str, str]] = []
    for group in by_model.values():  # dicts keep first-seen order: the model of the oldest job first
        out.extend(group[: max(1, per_model)])
        if len(out) >= limit:
            break
    return out[:limit]


def _dump(rec: JobRecord) -> str:
    return json.dumps(rec.to_flat())


def _load(raw: str) -> JobRecord:
    return JobRecord.from_flat(json.loads(raw))


