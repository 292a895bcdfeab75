"""The queue interface every backend implements (``sqlite.py``, ``redis.py``), and what it hands out.

Delivery is at-least-once: a claimed job carries a lease that its worker renews; a job
whose lease lapses (the worker died) is delivered again. Every transition out of
``running`` names the delivery's token, so a worker that lost its lease cannot
finish or requeue a job someone else now holds. Result writes are idempotent (one
key per job), so a job run twice still leaves exactly one result.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

from shoal.jobs.records import JobRecord, JobState


@dataclass
class Delivery:
    """One claim of a job: the record (state running) and the token that proves the claim."""

    record: JobRecord
    token: str
    handle: str = ""  # the backend's own reference (Redis: the stream entry id)


@dataclass
class Backlog:
    """Scaling signals for one set of models, as the queue sees them."""

    queued: int = 0
    running: int = 0
    workers: int = 0  # live workers of the same model set (this process included when it runs workers)

    @property
    def total(self) -> int:
        return self.queued + self.running


def model_group(models: list[str] | None) -> str:
    """A short name for a set of models: servers of one plan group share it (and their instance count)."""
    if models is None:
        return "all"
    return hashlib.sha256("\n".join(sorted(models)).encode()).hexdigest()[:16]


class JobQueue(ABC):
    """Every method is a coroutine; backends keep their blocking I/O off the event loop."""

    uri: str

    @abstractmethod
    async def submit(self, rec: JobRecord) -> None:
        """Store the record and queue it; when this returns, the job survives a crash."""

    @abstractmethod
    async def get(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job; returns the record as it is after (None: unknown id)."""

    @abstractmethod
    async def claim(self, models: list[str] | None, consumer: str, limit: int, per_model: int,
                    lease_s: float, wait_s: float) -> list[Delivery]:
        """Up to ``limit`` ready jobs of ``models`` (None: any), now running under a lease.

        ``per_model`` asks for up to that many jobs of the same model together, so they
        can share a batch; waits up to ``wait_s`` when nothing is ready.
        """

    @abstractmethod
    async def renew(self, deliveries: list[Delivery], lease_s: float) -> None:
        """Extend the leases of jobs still being worked on."""

    @abstractmethod
    async def finish(self, d: Delivery, state: JobState, error: str | None = None,
                     dead_letter: bool = False) -> bool:
        """running -> succeeded | failed; False when the claim was lost (someone else finishes it)."""

    @abstractmethod
    async def retry(self, d: Delivery, delay_s: float, error: str | None, count: bool = True) -> bool:
        """running -> queued, ready again after ``delay_s``; ``count=False`` gives the attempt back."""

    @abstractmethod
    async def backlog(self, models: list[str] | None, group: str, live_s: float) -> Backlog: ...

    @abstractmethod
    async def heartbeat(self, consumer: str, group: str) -> None:
        """Say this worker is alive (counts toward ``Backlog.workers``)."""

    @abstractmethod
    async def leave(self, consumer: str, group: str) -> None: ...

    @abstractmethod
    async def unnotified(self, finished_before: float, limit: int) -> list[JobRecord]:
        """Finished jobs whose webhooks were never confirmed (their process may have died)."""

    @abstractmethod
    async def notified(self, job_id: str) -> None: ...

    @abstractmethod
    async def purge(self, finished_before: float) -> int:
        """Forget finished jobs older than the retention; returns how many."""

    def wake(self) -> None:
        """A job was submitted in this process: wake a waiting ``claim`` now (optional)."""

    @abstractmethod
    async def close(self) -> None: ...
