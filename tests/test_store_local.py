"""The local folder store: atomic pushes, verified fetches, safe ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.errors import IntegrityError, StoreError, UsageError
from shoal.store import open_store
from shoal.store.local import LocalStore
from shoal.store.manifest import Manifest, describe_files


def _model_folder(tmp_path: Path, model_id: str, payload: bytes = b"weights") -> tuple[Path, Manifest]:
    src = tmp_path / f"src-{model_id}"
    src.mkdir()
    (src / "model.pt").write_bytes(payload)
    (src / "tokenizer.json").write_text("{}")
    manifest = Manifest(id=model_id, kind="text", task="embedding",
                        files=describe_files(src, ["model.pt", "tokenizer.json"]))
    return src, manifest


def test_push_list_fetch_remove(tmp_path: Path, store: LocalStore) -> None:
    src, manifest = _model_folder(tmp_path, "m1")
    store.push(src, manifest)
    assert store.list_ids() == ["m1"]
    folder = store.fetch("m1")
    assert (folder / "model.pt").read_bytes() == b"weights"
    store.remove("m1")
    assert store.list_ids() == []
    assert not [p for p in store.root.iterdir() if not p.name.startswith(".")]
    assert not store.blobs.digests(), "the last user's removal deletes its blobs"


def test_fetch_detects_tampered_file(tmp_path: Path, store: LocalStore) -> None:
    src, manifest = _model_folder(tmp_path, "m1")
    store.push(src, manifest)
    target = store.root / "m1" / "model.pt"
    target.unlink()  # break the hard link before writing, as an attacker would
    target.write_bytes(b"evil!!!")
    with pytest.raises(IntegrityError, match="sha256"):
        store.fetch("m1")


def test_digest_is_remembered_only_while_the_file_is_unchanged(tmp_path: Path, store: LocalStore) -> None:
    """A reload skips the hash of an unchanged file; an in-place edit is caught even with its mtime put back."""
    import os

    from shoal.store import digests

    src, manifest = _model_folder(tmp_path, "m1")
    store.push(src, manifest)
    store.fetch("m1")
    before = dict(digests.stats)
    store.fetch("m1")
    assert digests.stats["remembered"] - before["remembered"] == 2 and digests.stats["hashed"] == before["hashed"]
    target = store.root / "m1" / "model.pt"
    st = target.stat()
    with open(target, "r+b") as fh:  # same inode, same size, mtime restored: only ctime tells
        fh.write(b"W")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(IntegrityError, match="sha256"):
        store.fetch("m1")


def test_failed_push_leaves_nothing(tmp_path: Path, store: LocalStore) -> None:
    src, manifest = _model_folder(tmp_path, "m1")
    (src / "model.pt").write_bytes(b"changed after the manifest was written")
    with pytest.raises(IntegrityError):
        store.push(src, manifest)
    assert store.list_ids() == []
    assert [p.name for p in store.root.iterdir()] == []


def test_push_replaces_existing_model_atomically(tmp_path: Path, store: LocalStore) -> None:
    src, manifest = _model_folder(tmp_path, "m1")
    store.push(src, manifest)
    (tmp_path / "v2").mkdir()
    src2, manifest2 = _model_folder(tmp_path / "v2", "m1", b"new weights")
    store.push(src2, manifest2)
    assert (store.fetch("m1") / "model.pt").read_bytes() == b"new weights"
    assert sorted(p.name for p in store.root.iterdir() if not p.name.startswith(".")) == ["m1"]
    assert store.blobs.digests() == {e.sha256 for e in manifest2.files.values()}, "the old version's blobs went"


@pytest.mark.parametrize("bad", ["../etc", "a/b", "..", "/abs", "", ".hidden", "a%2Fb", "x" * 200])
def test_bad_ids_are_refused(store: LocalStore, bad: str) -> None:
    with pytest.raises(UsageError):
        store.read_manifest(bad)


def test_missing_model_is_a_clear_error(store: LocalStore) -> None:
    with pytest.raises(StoreError, match="not in"):
        store.fetch("nope")


def test_open_store_uris(tmp_path: Path) -> None:
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    with pytest.raises(UsageError, match="scheme"):
        open_store("ftp://x/y")
    with pytest.raises(UsageError, match="bucket"):
        open_store("s3:///prefix")
