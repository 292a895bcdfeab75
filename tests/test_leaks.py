"""Load/unload cycles through the management API: resident memory must not grow (< 5 %).

A bert-mini classifier (17 MB of weights) makes a leaked copy visible: 500 cycles
that each kept even 1 % of it would add 85 MB. The baseline is taken after a few
warm-up cycles (allocator pools, TorchScript caches, the shared tokenizer), and
RSS is read at its settled low (freed pages return with a short lag).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from shoal.store import open_store
from shoal.trace.tiny import make_tiny_model
from tests.reliability_support import rss_bytes, serve, settle_rss
from tests.server_fixtures import ServerProcess

WARMUP = 10
LONG = os.environ.get("SHOAL_LONG_TESTS") == "1"


@pytest.fixture(scope="module")
def mini_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("leaks")
    store = open_store(f"file://{root / 'store'}")
    make_tiny_model(store, "mini", task="classification", preset="bert-mini", build_dir=root / "build")
    return store.uri


@pytest.fixture
def lazy_server(mini_store: str, tmp_path: Path) -> Iterator[ServerProcess]:
    proc = serve(mini_store, tmp_path, "--preload", "none", "--executors", "2", "--threads", "1")
    yield proc
    proc.stop()


def cycles(server: ServerProcess, count: int) -> dict[str, float]:
    """``count`` x (load, predict, unload) of ``mini``; RSS after warm-up and at the end."""
    assert server.proc is not None
    pid = server.proc.pid
    figures: dict[str, float] = {}
    t0 = time.monotonic()
    with server.client() as c:
        for i in range(count):
            assert c.post("/models/mini/load").status_code == 200
            r = c.post("/predictions/mini", json={"text": f"cycle {i}"})
            assert r.status_code == 200, r.text
            unloaded = c.delete("/models/mini")
            assert unloaded.status_code == 200 and unloaded.json()["state"] == "unloaded"
            if i + 1 == WARMUP:
                figures["baseline_mib"] = settle_rss(pid) / 2**20
        state = c.get("/models/mini").json()
        assert state["loads"] == count and state["bytes"] == 0
        assert "shoal_resident_bytes 0.0" in c.get("/metrics").text
    figures["final_mib"] = settle_rss(pid, 2.0) / 2**20
    figures["peak_mib"] = _peak(pid) / 2**20
    figures["growth"] = figures["final_mib"] / figures["baseline_mib"] - 1
    figures["seconds"] = time.monotonic() - t0
    return figures


def _peak(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        line = next(x for x in fh if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def report(name: str, count: int, f: dict[str, float]) -> None:
    print(f"{name}: {count} load/unload cycles in {f['seconds']:.0f} s; RSS {f['baseline_mib']:.1f} MiB after "
          f"{WARMUP} -> {f['final_mib']:.1f} MiB ({f['growth'] * 100:+.2f} %), peak {f['peak_mib']:.1f} MiB")


@pytest.mark.parametrize("count", [500 if LONG else 250])
def test_load_unload_cycles_do_not_grow_memory(lazy_server: ServerProcess, count: int) -> None:
    """250 cycles by default (about 40-100 s on the shared 2-core machine), 500 with SHOAL_LONG_TESTS=1."""
    f = cycles(lazy_server, count)
    report("leaks", count, f)
    assert f["growth"] < 0.05, f
    assert rss_bytes(lazy_server.proc.pid) > 0  # type: ignore[union-attr]


@pytest.mark.slow
def test_glibc_defaults_for_comparison(mini_store: str, tmp_path: Path) -> None:
    """The same cycles without the allocator tuning (SHOAL_MALLOC_TUNING=0): the figure docs/RELIABILITY.md compares."""
    proc = serve(mini_store, tmp_path, "--preload", "none", "--executors", "2", "--threads", "1",
                 env={"SHOAL_MALLOC_TUNING": "0"})
    try:
        f = cycles(proc, 500)
    finally:
        proc.stop()
    report("leaks, glibc defaults", 500, f)
    assert f["growth"] < 0.10, f  # no leak either way; the default only holds about one freed model longer
