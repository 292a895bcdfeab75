"""The durable job queue: SQLite (one host, the default) or Redis Streams, behind ``base.JobQueue``.

``open_queue`` picks the backend from the URI and imports only that one (redis is optional).
"""

from __future__ import annotations

from urllib.parse import urlparse

from shoal.errors import UsageError
from shoal.jobs.queue.base import Backlog, Delivery, JobQueue, model_group

__all__ = ["Backlog", "Delivery", "JobQueue", "model_group", "open_queue"]


def open_queue(uri: str) -> JobQueue:
    """``sqlite:///PATH`` (or a bare path ending in .sqlite/.db) or ``redis://HOST:PORT/DB``."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" or (not parsed.scheme and uri.endswith((".sqlite", ".db"))):
        from pathlib import Path

        from shoal.jobs.queue.sqlite import SqliteQueue

        # As in SQLAlchemy: sqlite:///rel/path and sqlite:////abs/path
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri.removeprefix("sqlite://")
        if not path:
            raise UsageError(f"queue {uri!r} names no file: use sqlite:///PATH")
        return SqliteQueue(Path(path))
    if parsed.scheme in ("redis", "rediss", "unix"):
        from shoal.jobs.queue.redis import RedisQueue

        return RedisQueue(uri)
    raise UsageError(f"queue {uri!r}: use sqlite:///PATH or redis://HOST:PORT/DB")
