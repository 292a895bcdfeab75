"""The long tail over HTTP: swap-ins from the disk tier, integrity of the cache, prompt shedding, safe eviction."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from shoal.server.load_queue import LoadQueue, LoadTicket
from shoal.server.registry import model_cost
from shoal.store import open_store
from shoal.store.base import ModelStore
from shoal.store.manifest import MANIFEST_NAME, Manifest
from tests.s3_server import ACCESS_KEY, SECRET_KEY, start_seaweedfs
from tests.server_fixtures import ServerProcess, store_uri, tiny_store  # noqa: F401

TEXTS = ["the first sentence", "another one, a little longer than the first", "short"]


def predict(c: httpx.Client, model_id: str, text: str) -> dict:
    r = c.post(f"/predictions/{model_id}", json={"text": text})
    assert r.status_code == 200, r.text
    return r.json()["prediction"]


def states(c: httpx.Client) -> dict[str, dict]:
    return {m["id"]: m for m in c.get("/models").json()["models"]}


def test_tiny_models_are_shared_graphs(tiny_store: ModelStore) -> None:
    """The trace stage writes the swap-in form: a graph shared by the copies + a weights file each."""
    a, b = tiny_store.read_manifest("tiny-cls"), tiny_store.read_manifest("tiny-cls2")
    assert a.weights == "weights.safetensors" and a.artifact == "graph.pt"
    # The weights plus a small overhead, not the whole process (nor the profile's in-process RSS delta,
    # which reads low when an earlier test in the same process freed memory the load then reused).
    assert model_cost(a) < a.weight_bytes + (2 << 20)
    assert a.files[a.weights].sha256 != b.files[b.weights].sha256


def test_swapped_in_model_answers_as_before_eviction(store_uri: str, tiny_store: ModelStore) -> None:
    ids = ["tiny-cls", "tiny-cls2", "tiny-emb"]
    budget = max(model_cost(tiny_store.read_manifest(i)) for i in ids) + 1000  # one model at a time
    proc = ServerProcess(["--store", store_uri, "--models", ",".join(ids), "--memory-budget", str(budget),
                          "--preload", "none"]).start()
    try:
        with proc.client() as c:
            before = {(m, t): predict(c, m, t) for m in ids for t in TEXTS}
            for _ in range(2):  # every call below swaps its model in again
                for (m, t), expected in before.items():
                    assert predict(c, m, t) == expected
            s = states(c)
            assert all(s[m]["loads"] >= 3 for m in ids), s
            assert sum(1 for m in ids if s[m]["state"] == "ready") == 1
    finally:
        proc.stop()


def test_corrupted_cache_file_is_refetched_never_served(tmp_path: Path, tiny_store: ModelStore,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 store: the cached weights are corrupted in place between two swap-ins; the server fetches them anew."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    s3 = start_seaweedfs(tmp_path / "s3")
    try:
        import boto3

        boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1").create_bucket(Bucket="tail")
        remote = open_store("s3://tail/models", cache_dir=tmp_path / "push-cache", endpoint_url=s3.endpoint)
        local_root = Path(tiny_store.uri.removeprefix("file://"))
        for model_id in ("tiny-cls", "tiny-cls2"):
            folder = local_root / model_id
            remote.push(folder, Manifest.model_validate_json((folder / MANIFEST_NAME).read_text()))
        budget = model_cost(tiny_store.read_manifest("tiny-cls")) + 1000
        cache = tmp_path / "cache"
        proc = ServerProcess(["--store", remote.uri, "--memory-budget", str(budget), "--preload", "none"],
                             env={"SHOAL_S3_ENDPOINT_URL": s3.endpoint, "SHOAL_CACHE_DIR": str(cache)}).start()
        try:
            with proc.client() as c:
                expected = predict(c, "tiny-cls", TEXTS[1])
                predict(c, "tiny-cls2", TEXTS[1])  # evicts tiny-cls from memory; its files stay cached
                weights = cache / "tail" / "models" / "tiny-cls" / "weights.safetensors"
                assert weights.is_file()
                with open(weights, "r+b") as fh:  # in place: same inode, same size
                    fh.seek(weights.stat().st_size // 2)
                    fh.write(b"\x7f" * 64)
                assert predict(c, "tiny-cls", TEXTS[1]) == expected
                assert states(c)["tiny-cls"]["loads"] == 2
        finally:
            proc.stop()
    finally:
        s3.stop()


def test_local_store_corruption_is_never_served(store_uri: str) -> None:
    """A local store links its files into the cache: a file corrupted in the store fails its model alone."""
    proc = ServerProcess(["--store", store_uri, "--preload", "none"]).start()
    try:
        with proc.client() as c:
            r = c.post("/predictions/broken", json={"text": "x"})
            assert r.status_code == 503 and "sha256" in r.json()["error"], r.text
            assert predict(c, "tiny-cls", "x")
    finally:
        proc.stop()


def test_a_deadline_no_load_can_meet_gets_503_at_once(store_uri: str) -> None:
    proc = ServerProcess(["--store", store_uri, "--preload", "none"]).start()
    try:
        with proc.client() as c:
            t0 = time.perf_counter()
            r = c.post("/predictions/tiny-emb", json={"text": "x"}, headers={"X-Request-Timeout-Ms": "1"})
            took = time.perf_counter() - t0
            assert r.status_code == 503 and r.headers.get("Retry-After"), r.text
            assert "swap-in" in r.json()["error"]
            assert took < 1.0, took
            assert states(c)["tiny-emb"]["state"] == "unloaded"  # a shed request starts no load
            assert c.post("/predictions/tiny-emb", json={"text": "x"}).status_code == 200
            text = c.get("/metrics").text
            assert "shoal_load_shed_total 1.0" in text
    finally:
        proc.stop()


def test_eviction_with_requests_in_flight_never_drops_one(store_uri: str, tiny_store: ModelStore) -> None:
    ids = ["tiny-cls", "tiny-cls2", "tiny-emb", "tiny-qa"]
    costs = sorted(model_cost(tiny_store.read_manifest(i)) for i in ids)
    budget = costs[-1] + costs[-2] + 1000  # two of four at a time: constant eviction under load
    proc = ServerProcess(["--store", store_uri, "--models", ",".join(ids), "--memory-budget", str(budget),
                          "--preload", "none", "--max-load-wait", "20"]).start()
    try:
        bodies = {m: {"text": "what a day"} for m in ids[:3]}
        bodies["tiny-qa"] = {"question": "what day?", "context": "a fine day"}
        with proc.client() as c:
            reference = {m: c.post(f"/predictions/{m}", json=b).json()["prediction"] for m, b in bodies.items()}

        async def storm() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=proc.url, timeout=60,
                                         limits=httpx.Limits(max_connections=64)) as ac:
                return await asyncio.gather(*(ac.post(f"/predictions/{ids[i % 4]}", json=bodies[ids[i % 4]])
                                              for i in range(160)))

        responses = asyncio.run(storm())
        assert [r.status_code for r in responses] == [200] * len(responses), \
            {r.status_code: r.text for r in responses if r.status_code != 200}
        for i, r in enumerate(responses):
            assert r.json()["prediction"] == reference[ids[i % 4]]
        with proc.client() as c:
            s = states(c)
            assert sum(s[m]["loads"] for m in ids) > 4  # models really were evicted and swapped in again
            assert c.get("/models").json()["resident_bytes"] <= budget
    finally:
        proc.stop()


def test_load_queue_serves_the_most_wanted_model_first() -> None:
    """Unit: with one slot busy, the pending load with more waiting requests starts before an older one."""
    async def scenario() -> list[str]:
        queue = LoadQueue(slots=1)
        order: list[str] = []
        first = LoadTicket("running")
        await queue.acquire(first)
        rare, hot = LoadTicket("rare"), LoadTicket("hot", waiters=5)

        async def load(t: LoadTicket) -> None:
            await queue.acquire(t)
            order.append(t.model_id)
            queue.release(0.01)

        tasks = [asyncio.create_task(load(rare)), asyncio.create_task(load(hot))]
        await asyncio.sleep(0)
        assert queue.ahead_of(None) == 2 and queue.ahead_of(hot) == 0 and queue.ahead_of(rare) == 1
        assert queue.estimate_s(rare) > queue.estimate_s(hot)
        queue.release(0.01)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["hot", "rare"]


def test_local_catalog_is_verified_into_the_disk_tier_in_the_background(store_uri: str, tmp_path: Path) -> None:
    """With --preload none, nothing is loaded, yet every model's files reach the disk tier, stamped."""
    cache = tmp_path / "cache"
    proc = ServerProcess(["--store", store_uri, "--preload", "none"], env={"SHOAL_CACHE_DIR": str(cache)}).start()
    try:
        with proc.client() as c:
            ids = [m for m, s in states(c).items() if m != "broken"]
            deadline = time.monotonic() + 60
            stamped: set[str] = set()
            while time.monotonic() < deadline:
                stamped = {p.parent.name for p in cache.glob("local/*/*/.verified.json")}
                if set(ids) <= stamped:
                    break
                time.sleep(0.2)
            assert set(ids) <= stamped, sorted(set(ids) - stamped)
            assert {s["state"] for m, s in states(c).items() if m != "broken"} == {"unloaded"}
            assert predict(c, ids[0], "x")
    finally:
        proc.stop()
