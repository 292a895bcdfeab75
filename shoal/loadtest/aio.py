"""Run a coroutine on uvloop when it is installed (it comes with uvicorn[standard]).

Why: the generator's ceiling is mostly event-loop overhead; uvloop roughly halves it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
