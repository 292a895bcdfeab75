"""Registry behaviour over HTTP: lazy loading, single-flight, LRU eviction under a budget, load/unload."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from typing import Iterator

import httpx
import pytest

from shoal.server.registry import model_cost
from shoal.trace.tiny import make_tiny_model
from shoal.store.base import ModelStore
from tests.server_fixtures import ServerProcess, store_uri, tiny_store  # noqa: F401


def states(c: httpx.Client) -> dict[str, dict]:
    return {m["id"]: m for m in c.get("/models").json()["models"]}


def metric(text: str, name: str, model: str, extra: str = "") -> float:
    pattern = rf'^{name}\{{{extra}model="{re.escape(model)}"[^}}]*\}} (\S+)$' if not extra else \
        rf'^{name}\{{model="{re.escape(model)}",{extra}\}} (\S+)$'
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def lazy(store_uri: str) -> Iterator[ServerProcess]:
    """The whole tiny store, nothing preloaded."""
    proc = ServerProcess(["--store", store_uri, "--preload", "none"]).start()
    yield proc
    proc.stop()


def test_lazy_load_and_single_flight(lazy: ServerProcess) -> None:
    with lazy.client() as c:
        assert {m["state"] for m in states(c).values() if m["id"] != "broken"} == {"unloaded"}

        async def burst() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(base_url=lazy.url, timeout=60, limits=limits) as ac:
                return await asyncio.gather(*(ac.post("/predictions/tiny-cls", json={"text": f"t {i}"})
                                              for i in range(100)))

        responses = asyncio.run(burst())
        assert [r.status_code for r in responses] == [200] * 100
        entry = states(c)["tiny-cls"]
        assert entry["state"] == "ready" and entry["loads"] == 1
        text = c.get("/metrics").text
        assert metric(text, "shoal_model_loads_total", "tiny-cls", 'result="ok"') == 1.0
        assert metric(text, "shoal_model_cache_misses_total", "tiny-cls") >= 1
        assert metric(text, "shoal_model_cache_hits_total", "tiny-cls") + \
            metric(text, "shoal_model_cache_misses_total", "tiny-cls") == 100
        assert states(c)["tiny-emb"]["state"] == "unloaded"  # nothing else was loaded


def test_lru_eviction_under_budget(store_uri: str, tiny_store: ModelStore) -> None:
    ids = ["tiny-cls", "tiny-cls2", "tiny-emb"]
    costs = {i: model_cost(tiny_store.read_manifest(i)) for i in ids}
    budget = sorted(costs.values())[-1] + sorted(costs.values())[-2] + 1000  # any two fit, never three
    proc = ServerProcess(["--store", store_uri, "--models", ",".join(ids), "--memory-budget", str(budget),
                          "--preload", "none"]).start()
    try:
        with proc.client() as c:
            def ask(model_id: str) -> None:
                assert c.post(f"/predictions/{model_id}", json={"text": "hello"}).status_code == 200

            ask("tiny-cls")
            ask("tiny-cls2")
            ask("tiny-cls")  # tiny-cls2 is now the coldest: one request, and the least recent
            ask("tiny-emb")
            s = states(c)
            assert (s["tiny-cls"]["state"], s["tiny-cls2"]["state"], s["tiny-emb"]["state"]) == \
                ("ready", "unloaded", "ready")
            listing = c.get("/models").json()
            assert listing["resident_bytes"] <= budget == listing["budget_bytes"]
            ask("tiny-cls2")  # evicts tiny-emb (one recent request), not tiny-cls (two), though it is older
            assert (states(c)["tiny-cls"]["state"], states(c)["tiny-emb"]["state"]) == ("ready", "unloaded")
            text = c.get("/metrics").text
            assert metric(text, "shoal_model_evictions_total", "tiny-cls2") == 1.0
            assert metric(text, "shoal_model_evictions_total", "tiny-emb") == 1.0
            assert "shoal_models_resident 2.0" in text
    finally:
        proc.stop()


def test_busy_model_is_never_evicted(store_uri: str, tiny_store: ModelStore) -> None:
    budget = max(model_cost(tiny_store.read_manifest(i)) for i in ("tiny-emb", "tiny-cls")) + 1000  # one model fits
    proc = ServerProcess(["--store", store_uri, "--models", "tiny-emb,tiny-cls", "--memory-budget", str(budget),
                          "--preload", "1", "--executors", "2", "--threads", "1"]).start()
    texts = ["a long sentence with many words " * 8] * 64
    finished: list[str] = []

    async def timed(client: httpx.AsyncClient, name: str, model_id: str, body: dict) -> httpx.Response:
        resp = await client.post(f"/predictions/{model_id}", json=body)
        finished.append(name)
        return resp

    async def run() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=proc.url, timeout=60) as client:
            big = asyncio.ensure_future(timed(client, "big", "tiny-emb", {"inputs": texts}))
            await asyncio.sleep(0.02)
            other = await timed(client, "other", "tiny-cls", {"text": "x"})
            return await big, other

    try:
        big, other = asyncio.run(run())
        assert big.status_code == 200 and len(big.json()["predictions"]) == 64
        assert other.status_code == 200
        assert finished == ["big", "other"]  # tiny-cls could only load once tiny-emb's request was done
        with proc.client() as c:
            s = states(c)
        assert s["tiny-cls"]["state"] == "ready" and s["tiny-emb"]["state"] == "unloaded"
    finally:
        proc.stop()


def test_models_pushed_later_are_discovered(lazy: ServerProcess, tiny_store: ModelStore, tmp_path: Path) -> None:
    with lazy.client() as c:
        assert c.post("/predictions/tiny-late", json={"text": "x"}).status_code == 404
        make_tiny_model(tiny_store, "tiny-late", task="embedding", seed=4, build_dir=tmp_path)
        assert c.post("/predictions/tiny-late", json={"text": "x"}).status_code == 200
        assert states(c)["tiny-late"]["state"] == "ready"


def test_explicit_load_and_unload(lazy: ServerProcess) -> None:
    with lazy.client() as c:
        assert c.get("/models/tiny-qa").json()["state"] == "unloaded"
        loaded = c.post("/models/tiny-qa/load")
        assert loaded.status_code == 200 and loaded.json()["state"] == "ready"
        assert c.get("/v2/models/tiny-qa/ready").status_code == 200
        unloaded = c.delete("/models/tiny-qa")
        assert unloaded.status_code == 200 and unloaded.json()["state"] == "unloaded"
        not_ready = c.get("/v2/models/tiny-qa/ready")
        assert not_ready.status_code == 400 and not_ready.json()["state"] == "unloaded"
