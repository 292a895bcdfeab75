"""`GET /models` (a real `shoal serve`) and `shoal models list` show families: own and shared bytes per
model, and a total where each family's shared bytes count once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from shoal.family.keys import family_key, own_bytes, shared_bytes
from shoal.family.listing import model_bytes, short_key, totals
from shoal.store import open_store
from shoal.store.base import ModelStore
from shoal.trace.synth import synth_models
from shoal.trace.tiny import make_tiny_model
from tests.server_fixtures import REPO, ServerProcess, test_cache_dir

MEMBERS = ["fam", "fam-0000", "fam-0001", "fam-0002"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    root = tmp_path_factory.mktemp("family-listing")
    s = open_store(f"file://{root / 'store'}")
    make_tiny_model(s, "fam", task="classification", seed=11, build_dir=root / "build")
    synth_models(s, "fam", 3, prefix="fam", build_dir=root / "build")
    make_tiny_model(s, "other", task="classification", seed=12, build_dir=root / "build")
    return s


@pytest.fixture(scope="module")
def server(store: ModelStore) -> Iterator[ServerProcess]:
    proc = ServerProcess(["--store", store.uri, "--executors", "1", "--threads", "1",
                          "--prefetch-batches", "0"]).start()
    yield proc
    proc.stop()


def test_model_bytes_split_own_and_shared(store: ModelStore) -> None:
    m = store.read_manifest("fam-0001")
    b = model_bytes(m)
    assert b.family == family_key(m) and b.own_bytes == own_bytes(m) and b.shared_bytes == shared_bytes(m)
    assert b.own_bytes + b.shared_bytes == m.weight_bytes and 0 < b.own_bytes < b.shared_bytes
    t = totals(model_bytes(store.read_manifest(x)) for x in MEMBERS)
    assert t.shared_bytes == b.shared_bytes and len(t.families) == 1  # four members, the base once
    assert t.total_bytes == b.shared_bytes + sum(own_bytes(store.read_manifest(x)) for x in MEMBERS)


def test_models_endpoint_counts_shared_bytes_once(store: ModelStore, server: ServerProcess) -> None:
    with server.client() as c:
        assert c.post("/predictions/fam-0001", json={"text": "warm"}).status_code == 200
        listing = c.get("/models").json()
        one = c.get("/models/fam-0002").json()
    by_id = {m["id"]: m for m in listing["models"]}
    key = short_key(family_key(store.read_manifest("fam")))
    assert key is not None and len(key) == 8
    for mid in MEMBERS:
        m = store.read_manifest(mid)
        assert by_id[mid]["family"] == key
        assert by_id[mid]["own_bytes"] == own_bytes(m) and by_id[mid]["shared_bytes"] == shared_bytes(m)
    other = store.read_manifest("other")
    assert by_id["other"]["family"] == short_key(family_key(other)) != key
    assert one["family"] == key and one["shared_bytes"] == by_id["fam-0002"]["shared_bytes"]
    shared = shared_bytes(store.read_manifest("fam"))
    owns = sum(by_id[x]["own_bytes"] for x in by_id)
    assert listing["own_bytes"] == owns
    assert listing["shared_bytes"] == shared + shared_bytes(other)
    assert listing["total_bytes"] == owns + shared + shared_bytes(other)
    assert listing["total_bytes"] < sum(store.read_manifest(x).weight_bytes for x in by_id)
    fams = {f["family"]: f for f in listing["families"]}
    assert fams[key]["members"] == 4 and fams[key]["shared_bytes"] == shared


def test_models_list_cli_shows_families_and_the_total(store: ModelStore) -> None:
    env = {**os.environ, "COLUMNS": "200", "SHOAL_CACHE_DIR": str(test_cache_dir())}
    out = subprocess.run([sys.executable, "-m", "shoal.cli", "models", "list", "--store", store.uri], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    key = short_key(family_key(store.read_manifest("fam")))
    assert key is not None
    lines = [line for line in out.stdout.splitlines() if "fam-000" in line]
    assert len(lines) == 3 and all(key in line for line in lines)
    t = totals(model_bytes(m) for m in store.manifests())
    total = [line for line in out.stdout.splitlines() if line.startswith("total:")]
    assert total and "5 models" in total[0] and f"{key} (4 models" in total[0] and "(1 model," in total[0]
    assert t.total_bytes < sum(m.weight_bytes for m in store.manifests())
    listed_json = subprocess.run([sys.executable, "-m", "shoal.cli", "models", "list", "--json", "--store",
                                  store.uri], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert listed_json.returncode == 0 and '"family_graph"' in listed_json.stdout  # unchanged: manifests for pack


def test_pack_of_the_store_places_the_family_once(store: ModelStore, tmp_path: Path) -> None:
    from shoal.pack.run import PackRequest, run_pack

    out = run_pack(PackRequest(instances=["local"], servers=2, store=store.uri, time_limit=1.0))
    fams = {f.key: f for f in out.plan.families}
    key = family_key(store.read_manifest("fam"))
    assert key in fams and fams[key].members == 4 and len(fams[key].servers) == 1
    assert family_key(store.read_manifest("other")) not in fams  # a family of one packs as before
