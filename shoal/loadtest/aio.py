"""Run a coroutine on uvloop when it is installed (it comes with uvicorn[standard]).

Why: the generator's ceiling is mostly event-loop overhead; uvloop roughly halves it. The heap is
frozen first: a full collection over torch's and the run's long-lived objects would stall the
loop for tens of milliseconds and count as the server's latency tail.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    gc.collect()
    gc.freeze()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
