"""Content-addressed weights: every store keeps a content once and removes it with its last user.

Real parts only: local folders, a real SeaweedFS S3 server, the disk tier on a real filesystem, and a
real `shoal serve` over HTTP.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import httpx
import pytest

from shoal.errors import IntegrityError
from shoal.store import open_store
from shoal.store.base import verify_files
from shoal.store.cache import VerifiedCache
from shoal.store.local import LocalStore
from shoal.store.manifest import Manifest, describe_files
from shoal.trace.synth import synth_models
from shoal.trace.tiny import make_tiny_model
from tests.server_fixtures import ServerProcess, run_cli

SHARED = os.urandom(1 << 20)  # a "base shard" every member below links


def _member(tmp: Path, model_id: str, own: bytes, shared: bytes = SHARED) -> tuple[Path, Manifest]:
    src = tmp / f"src-{model_id}-{os.urandom(4).hex()}"
    (src / "shards").mkdir(parents=True)
    (src / "shards" / "base.safetensors").write_bytes(shared)
    (src / "weights.safetensors").write_bytes(own)
    names = ["shards/base.safetensors", "weights.safetensors"]
    return src, Manifest(id=model_id, kind="text", task="embedding", artifact="weights.safetensors", tokenizer=None,
                         files=describe_files(src, names))


def _disk_bytes(root: Path) -> int:
    """What `du` counts: allocated blocks, each inode once however many links it has."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _consistent(store: LocalStore) -> None:
    """Every listed model verifies, and the blobs are exactly the contents listed models use."""
    used: set[str] = set()
    for model_id in store.list_ids():
        manifest = store.read_manifest(model_id)
        verify_files(store.fetch(model_id), manifest)
        used |= {e.sha256 for e in manifest.files.values()}
    assert store.blobs.digests() == used


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    """A tiny traced base and three synthesized members."""
    root = tmp_path_factory.mktemp("cas")
    store = LocalStore(root / "store")
    make_tiny_model(store, "cas", task="classification", seed=5, build_dir=root / "build")
    synth_models(store, "cas", 3, prefix="cas", build_dir=root / "build")
    return store


def test_synthesized_members_store_the_base_once(family: LocalStore) -> None:
    base = family.read_manifest("cas")
    members = [family.read_manifest(f"cas-{i:04d}") for i in range(3)]
    assert base.weights
    shard = base.files[base.weights].sha256
    for m in members:
        assert m.files[f"shards/{shard[:16]}.safetensors"].sha256 == shard  # the base's bytes, by reference
        own = m.files["weights.safetensors"]
        assert own.size < base.files[base.weights].size / 4  # only the member's own tensors
        assert {t.file for t in m.tensors.values()} == {"weights.safetensors", f"shards/{shard[:16]}.safetensors"}
    blob = family.blobs.path(shard)
    assert blob.stat().st_nlink == 1 + 4  # the blob, the base's folder and three members' folders
    contents = {e.sha256: e.size for m in [base, *members] for e in m.files.values()}
    assert family.blobs.digests() == set(contents)
    logical = sum(e.size for m in [base, *members] for e in m.files.values())
    assert _disk_bytes(family.root) < sum(contents.values()) + 64 * 4096 < logical
    _consistent(family)


def test_removing_members_keeps_shared_blobs_until_the_last_user(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ids = [f"m{i}" for i in range(3)]
    for i, model_id in enumerate(ids):
        store.push(*_member(tmp_path, model_id, own=bytes([i]) * 1000))
    shared = store.read_manifest("m0").files["shards/base.safetensors"].sha256
    assert len(store.blobs.digests()) == 4 and store.blobs.path(shared).stat().st_nlink == 4
    store.remove("m0")
    assert shared in store.blobs.digests() and len(store.blobs.digests()) == 3
    assert (store.fetch("m1") / "shards" / "base.safetensors").read_bytes() == SHARED
    store.remove("m1")
    assert shared in store.blobs.digests()
    _consistent(store)
    store.remove("m2")
    assert store.blobs.digests() == set() and store.list_ids() == []
    assert [p.name for p in store.root.iterdir() if not p.name.startswith(".")] == []


CHURN = """
import sys
from pathlib import Path
from shoal.store.local import LocalStore
from shoal.store.manifest import Manifest
root, src, rounds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
manifest = Manifest.model_validate_json((src / "shoal.json").read_text())
for _ in range(rounds):
    LocalStore(root).push(src, manifest)
    LocalStore(root).remove(manifest.id)
LocalStore(root).push(src, manifest)
"""


def test_concurrent_push_and_rm_leave_the_store_consistent(tmp_path: Path) -> None:
    """Processes push and remove members sharing one blob, so its link count keeps falling to 1 while
    another process links it; a model with other contents stays throughout. No push may link a blob a
    removal deletes, and no removal may leave a blob nobody uses."""
    import subprocess
    import sys

    store = LocalStore(tmp_path / "store")
    store.push(*_member(tmp_path, "keeper", own=b"keeper", shared=os.urandom(1000)))
    shared = os.urandom(64 << 10)
    sources = {f"w{i}": _member(tmp_path, f"w{i}", own=f"own {i}".encode(), shared=shared) for i in range(4)}
    for src, manifest in sources.values():
        (src / "shoal.json").write_text(manifest.model_dump_json())
    procs = [subprocess.Popen([sys.executable, "-c", CHURN, str(store.root), str(src), "150"], stderr=subprocess.PIPE,
                              text=True) for src, _ in sources.values()]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert store.list_ids() == sorted(["keeper", *sources])
    _consistent(store)
    for model_id in ["keeper", *sources]:
        store.remove(model_id)
    assert store.blobs.digests() == set()


def test_a_corrupted_blob_fails_only_the_models_using_it(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.push(*_member(tmp_path, "a", own=b"a's own"))
    store.push(*_member(tmp_path, "b", own=b"b's own"))
    store.push(*_member(tmp_path, "other", own=b"other's own", shared=os.urandom(4096)))
    own = store.read_manifest("a").files["weights.safetensors"].sha256
    with open(store.blobs.path(own), "r+b") as fh:  # in place: every link sees it
        fh.write(b"A")
    for s in (store, LocalStore(store.root, VerifiedCache(tmp_path / "cache"))):
        with pytest.raises(IntegrityError, match="sha256"):
            s.fetch("a")
        s.fetch("b")
        s.fetch("other")


def test_disk_tier_holds_a_shared_file_once_and_never_trims_what_a_pinned_model_uses(tmp_path: Path) -> None:
    sources = {m: _member(tmp_path, m, own=os.urandom(10_000)) for m in ("a", "b", "c")}

    def fill_from(model_id: str):  # noqa: ANN202 - a Fill
        return lambda name, tmp: shutil.copyfile(sources[model_id][0] / name, tmp)

    cache = VerifiedCache(tmp_path / "cache")
    for m, (_, manifest) in sources.items():
        folder = cache.ensure(manifest, fill_from(m))
        assert (folder / "shards" / "base.safetensors").read_bytes() == SHARED
    assert cache.owned_bytes() == len(SHARED) + 3 * 10_000  # the shared file once
    assert _disk_bytes(tmp_path / "cache") < len(SHARED) + 3 * 10_000 + 64 * 4096
    cache.stats["filled"] = 0
    cache.ensure(sources["b"][1], fill_from("b"))  # trusted by its stamps: nothing hashed or filled
    assert cache.stats["filled"] == 0

    cache.budget = 1  # everything must go but what a pinned model uses
    cache.pinned = lambda: {"c"}
    cache.trim()
    assert sorted(p.name for p in cache.root.iterdir() if not p.name.startswith(".")) == ["c"]
    assert cache.owned_bytes() == len(SHARED) + 10_000
    folder = cache.ensure(sources["c"][1], fill_from("c"))
    verify_files(folder, sources["c"][1])
    cache.pinned = set
    cache.trim()
    assert cache.owned_bytes() == 0


def test_s3_keeps_contents_once_and_removes_them_with_their_last_user(s3_endpoint: str, tmp_path: Path) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="cas")
    store = open_store("s3://cas/fleet", cache_dir=tmp_path / "cache", endpoint_url=s3_endpoint)
    for i in range(3):
        store.push(*_member(tmp_path, f"m{i}", own=bytes([i]) * 100))
    shared = store.read_manifest("m0").files["shards/base.safetensors"].sha256
    assert len(store.blob_digests()) == 4  # one shared blob, three own ones
    keys = {o["Key"] for o in store.client.list_objects_v2(Bucket="cas", Prefix="fleet/m0/")["Contents"]}
    assert keys == {"fleet/m0/shoal.json"}  # a model's prefix holds only its manifest
    assert store.list_ids() == ["m0", "m1", "m2"]  # .blobs and .refs are never models
    store.remove("m0")
    assert shared in store.blob_digests() and len(store.blob_digests()) == 3
    assert (store.fetch("m1") / "shards" / "base.safetensors").read_bytes() == SHARED
    store.push(*_member(tmp_path, "m2", own=b"a new version"))  # a re-push lets go of the old version's own blob
    assert len(store.blob_digests()) == 3
    store.remove("m1")
    store.remove("m2")
    assert store.blob_digests() == set()
    assert "Contents" not in store.client.list_objects_v2(Bucket="cas", Prefix="fleet/")

    # a model pushed before blobs existed (its files under its prefix) is still read and removed
    src, manifest = _member(tmp_path, "old", own=b"old")
    for name in manifest.files:
        store.client.upload_file(str(src / name), "cas", f"fleet/old/{name}")
    store.client.put_object(Bucket="cas", Key="fleet/old/shoal.json", Body=manifest.model_dump_json().encode())
    verify_files(store.fetch("old"), manifest)
    store.remove("old")
    assert "Contents" not in store.client.list_objects_v2(Bucket="cas", Prefix="fleet/")


def test_s3_concurrent_push_and_rm_leave_the_store_consistent(s3_endpoint: str, tmp_path: Path) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="churn")
    uri = "s3://churn"

    def open_(i: int):  # noqa: ANN202 - one client per thread, as separate processes would have
        return open_store(uri, cache_dir=tmp_path / f"cache-{i}", endpoint_url=s3_endpoint)

    open_(9).push(*_member(tmp_path, "keeper", own=b"keeper", shared=os.urandom(1000)))
    sources = {f"w{i}": _member(tmp_path, f"w{i}", own=f"own {i}".encode()) for i in range(3)}
    errors: list[BaseException] = []

    def churn(i: int, model_id: str) -> None:
        try:
            s = open_(i)
            for _ in range(5):
                s.push(*sources[model_id])
                s.remove(model_id)
            s.push(*sources[model_id])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(i, m)) for i, m in enumerate(sources)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    store = open_(8)
    assert store.list_ids() == sorted(["keeper", *sources])
    used = set()
    for model_id in store.list_ids():
        manifest = store.read_manifest(model_id)
        verify_files(store.fetch(model_id), manifest)
        used |= {e.sha256 for e in manifest.files.values()}
    assert store.blob_digests() == used


def test_removing_a_member_over_http_leaves_the_other_answering(family: LocalStore, tmp_path: Path) -> None:
    """A real server; the base and one member are removed from the store with `shoal models rm`; the other
    member, unloaded and loaded again from what is left, answers exactly as before. Then a third member's
    own blob is corrupted: it alone fails."""
    root = tmp_path / "store"
    shutil.copytree(family.root, root, symlinks=True)  # a private copy (the module's store stays whole)
    store = LocalStore(root)
    for model_id in store.list_ids():  # re-push: the copy's folders become links to its own blobs
        store.push(store.fetch(model_id), store.read_manifest(model_id))
    proc = ServerProcess(["--store", store.uri, "--executors", "1", "--threads", "1", "--preload", "none"]).start()
    try:
        with proc.client() as c:
            def ask(model_id: str) -> httpx.Response:
                return c.post(f"/predictions/{model_id}", json={"text": "the weights are shared"})

            before = ask("cas-0001")
            assert before.status_code == 200 and ask("cas-0000").status_code == 200
            out = run_cli("models", "rm", "cas-0000", "cas", "--store", store.uri)
            assert out.returncode == 0, out.stderr
            assert store.list_ids() == ["cas-0001", "cas-0002"]
            shard = store.read_manifest("cas-0001").files
            assert all(store.blobs.path(e.sha256).is_file() for e in shard.values())
            assert c.post("/models/cas-0001/unload").status_code == 200
            after = ask("cas-0001")
            assert after.status_code == 200, after.text
            assert after.json()["prediction"] == before.json()["prediction"]
            assert c.get("/models/cas-0001").json()["loads"] == 2

            # a blob corrupted in place in the store fails the one model using it, with its sha256 reason
            own = store.read_manifest("cas-0002").files["weights.safetensors"].sha256
            with open(store.blobs.path(own), "r+b") as fh:
                fh.seek(200)
                fh.write(b"corrupted")
            broken = ask("cas-0002")
            assert broken.status_code == 503 and "sha256" in broken.json()["error"], broken.text
            again = ask("cas-0001")
            assert again.status_code == 200 and again.json()["prediction"] == before.json()["prediction"]
    finally:
        proc.stop()


def test_disk_tier_folders_from_before_blobs_are_moved_in_without_a_fetch(tmp_path: Path) -> None:
    """A cache written by the previous layout (plain files in the model's folder) keeps its verified bytes."""
    src, manifest = _member(tmp_path, "old", own=b"own bytes")
    folder = tmp_path / "cache" / "old"
    shutil.copytree(src, folder)
    cache = VerifiedCache(tmp_path / "cache")

    def no_fill(name: str, tmp: Path) -> None:
        raise AssertionError(f"{name} was fetched again")

    assert cache.ensure(manifest, no_fill) == folder
    assert (folder / "shards" / "base.safetensors").is_symlink()
    assert cache.blob(manifest.files["weights.safetensors"].sha256).read_bytes() == b"own bytes"
    verify_files(folder, manifest)
