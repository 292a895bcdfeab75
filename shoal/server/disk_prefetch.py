"""Bring the catalog into the verified disk tier in the background, at idle priority.

Why: the first swap-in of a model must hash its files into the disk tier (~35 ms of sha256 for a
45 MB MiniLM, plus a cold read), and under a long-tail load rarely called models keep arriving
for the first time for hours. A server that knows its catalog verifies it ahead of demand: one
thread at nice 19, one model at a time, only while no swap-in is waiting or running, so it takes
CPU no request wants. On by default for a local folder store (hashing only: files are linked, no
disk used); off for S3 unless asked (``--disk-prefetch on``), since it downloads every model
within ``--disk-budget``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from shoal.errors import StoreUnavailable

if TYPE_CHECKING:
    from shoal.server.runtime import Runtime

log = logging.getLogger("shoal.server")
IDLE_NICE = 19


def wanted(setting: str, store: object) -> bool:
    """``auto``: a local folder store with a disk tier; ``on``: any store with one; ``off``: never."""
    cache = getattr(store, "cache", None)
    if cache is None or setting == "off":
        return False
    return setting == "on" or hasattr(store, "root")


async def prefetch_catalog(runtime: "Runtime") -> int:
    """Fetch every unloaded catalog model into the disk tier; returns how many were fetched."""
    registry, store = runtime.registry, runtime.store
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(1, thread_name_prefix="shoal-prefetch", initializer=_idle)
    done = 0
    start = time.monotonic()
    try:
        for model_id in list(registry.entries):
            entry = registry.entries.get(model_id)
            if entry is None or entry.state.value != "unloaded":
                continue  # resident, loading or failed: already handled
            while registry.loads.waiting or registry.loads.active:
                await asyncio.sleep(0.05)  # swap-ins first
            try:
                await loop.run_in_executor(pool, store.fetch, model_id)
            except StoreUnavailable:
                await asyncio.sleep(5.0)
                continue
            except Exception:  # noqa: BLE001 - a bad model fails on its own when it is asked for
                continue
            done += 1
        log.info("disk tier: %d model(s) verified in the background in %.0f s", done, time.monotonic() - start)
        return done
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _idle() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), IDLE_NICE)
    except (AttributeError, OSError):
        pass
