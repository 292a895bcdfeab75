"""Many small blocking calls, few trips to a thread: the I/O counterpart of the SQLite group commit.

Each job writes one small result and deletes one small payload. A thread hop per call
costs more than the call itself on a local disk (futex wake-ups, GIL hand-offs), so
calls that arrive while a trip is under way ride together on the next one, and the
whole trip's results come back to the event loop in one wake-up. Up to ``trips``
trips run at once, so slow calls (S3 round trips) still overlap.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


def settle(results: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    """Each waiting future gets its value or its exception (one already cancelled is left alone)."""
    for fut, value, exc in results:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


class Grouped(Generic[T]):
    def __init__(self, pool: Executor, fn: Callable[[T], Any], batch: int = 32, trips: int = 4) -> None:
        self.pool, self.fn, self.batch, self.trips = pool, fn, max(1, batch), max(1, trips)
        self._pending: list[tuple[T, asyncio.Future]] = []
        self._running = 0

    async def __call__(self, item: T) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((item, fut))
        self._launch(loop)
        return await fut

    def _launch(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._pending and self._running < self.trips:
            group, self._pending = self._pending[: self.batch], self._pending[self.batch:]
            self._running += 1
            loop.run_in_executor(self.pool, self._trip, loop, group)

    def _trip(self, loop: asyncio.AbstractEventLoop, group: list[tuple[T, asyncio.Future]]) -> None:
        """Pool thread: every call of the group, then one hand-back to the loop."""
        out: list[tuple[asyncio.Future, Any, BaseException | None]] = []
        for item, fut in group:
            try:
                out.append((fut, self.fn(item), None))
            except Exception as exc:
                out.append((fut, None, exc))
        loop.call_soon_threadsafe(self._done, loop, out)

    def _done(self, loop: asyncio.AbstractEventLoop, out: list[tuple[asyncio.Future, Any, BaseException | None]]
              ) -> None:
        self._running -= 1
        settle(out)
        self._launch(loop)
