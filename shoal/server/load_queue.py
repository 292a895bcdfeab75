"""Swap-ins ordered by the demand waiting on them, with an estimate of when each will be done.

Why: with a catalog far larger than memory, loads are a queue of their own. Served
first-come-first-served, a burst of one-off models delays the model fifty requests are
waiting for; and a request that joins a long load queue waits seconds for nothing. Here
a fixed number of load slots run on the loader threads (niced, so a forward always wins
the CPU), the next slot goes to the pending load with the most requests waiting (oldest
first among equals), and ``estimate_s`` tells a request how long its model will take, so
the registry can answer 503 + Retry-After at once instead of queueing it past its deadline.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

EWMA_WEIGHT = 0.2
FIRST_GUESS_S = 0.05  # before any load has been timed


@dataclass(eq=False)
class LoadTicket:
    """One pending load; ``waiters`` is kept up to date by the registry while it waits."""

    model_id: str
    waiters: int = 0
    since: float = field(default_factory=time.monotonic)
    slot: asyncio.Future | None = None


class LoadQueue:
    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self.active = 0
        self.waiting: list[LoadTicket] = []
        self.mean_s = FIRST_GUESS_S
        self.done = 0

    def priority(self, t: LoadTicket) -> tuple[int, float]:
        return (-t.waiters, t.since)

    def ahead_of(self, ticket: LoadTicket | None) -> int:
        """Pending loads that would start before ``ticket`` (all of them for a new one)."""
        if ticket is None:
            return len(self.waiting)
        mine = self.priority(ticket)
        return sum(1 for t in self.waiting if t is not ticket and self.priority(t) <= mine)

    def estimate_s(self, ticket: LoadTicket | None) -> float:
        """Seconds until ``ticket``'s load (or a new one) would be finished, at the mean load time so far."""
        queued = self.ahead_of(ticket) if ticket is None or ticket in self.waiting else -1
        if queued < 0:  # running now: about half a load to go, on average
            return self.mean_s / 2
        busy = self.active >= self.slots
        rounds = (queued + (1 if busy else 0)) / self.slots
        return (rounds + 1) * self.mean_s

    async def acquire(self, ticket: LoadTicket) -> None:
        """Wait for a load slot; the pending load with the most requests waiting gets the next one."""
        if self.active < self.slots and not self.waiting:
            self.active += 1
            return
        ticket.slot = asyncio.get_running_loop().create_future()
        self.waiting.append(ticket)
        try:
            await ticket.slot  # handed over already counted in ``active``
        except BaseException:
            if ticket in self.waiting:
                self.waiting.remove(ticket)
            elif ticket.slot.done() and not ticket.slot.cancelled():
                self.release(None)
            raise

    def release(self, elapsed_s: float | None) -> None:
        """Give the slot to the most wanted pending load; ``elapsed_s`` (a finished load) updates the mean."""
        if elapsed_s is not None:
            self.mean_s += EWMA_WEIGHT * (elapsed_s - self.mean_s)
            self.done += 1
        if self.waiting:
            best = min(self.waiting, key=self.priority)
            self.waiting.remove(best)
            assert best.slot is not None
            best.slot.set_result(None)  # the slot passes on: ``active`` stays the same
        else:
            self.active -= 1
