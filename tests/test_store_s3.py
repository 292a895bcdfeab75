"""The S3 store against a real SeaweedFS server on loopback: round trip, cache, integrity, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from shoal.store.cache import STAMPS

from shoal.errors import IntegrityError, StoreError
from shoal.store import open_store
from shoal.store.manifest import Manifest, describe_files
from shoal.store.s3 import S3Store


def _make_bucket(endpoint: str, name: str) -> None:
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)


def _folder(tmp_path: Path, model_id: str, payload: bytes) -> tuple[Path, Manifest]:
    src = tmp_path / f"src-{model_id}"
    src.mkdir()
    (src / "model.pt").write_bytes(payload)
    (src / "tokenizer.json").write_text('{"v": 1}')
    return src, Manifest(id=model_id, kind="text", task="embedding",
                         files=describe_files(src, ["model.pt", "tokenizer.json"]))


def _store(endpoint: str, tmp_path: Path, uri: str = "s3://models/fleet-a") -> S3Store:
    store = open_store(uri, cache_dir=tmp_path / "cache", endpoint_url=endpoint)
    assert isinstance(store, S3Store)
    return store


def test_round_trip_with_verified_cache(s3_endpoint: str, tmp_path: Path) -> None:
    _make_bucket(s3_endpoint, "models")
    store = _store(s3_endpoint, tmp_path)
    payload = os.urandom(3 * 1024 * 1024)
    for i in range(3):
        src, manifest = _folder(tmp_path, f"bert-{i}", payload + bytes([i]))
        store.push(src, manifest)
    assert store.list_ids() == ["bert-0", "bert-1", "bert-2"]
    folder = store.fetch("bert-1")
    assert (folder / "model.pt").read_bytes() == payload + b"\x01"
    assert not [p for p in folder.iterdir() if p.name.startswith(".") and p.name != STAMPS], "no temp files left"
    # A corrupted cache file is detected and downloaded again, never served.
    (folder / "model.pt").write_bytes(b"half a file")
    assert (store.fetch("bert-1") / "model.pt").read_bytes() == payload + b"\x01"
    store.remove("bert-2")
    assert store.list_ids() == ["bert-0", "bert-1"]


def test_tampered_object_is_refused(s3_endpoint: str, tmp_path: Path) -> None:
    _make_bucket(s3_endpoint, "tamper")
    store = _store(s3_endpoint, tmp_path, "s3://tamper")
    src, manifest = _folder(tmp_path, "m", b"good weights")
    store.push(src, manifest)
    sha = manifest.files["model.pt"].sha256
    store.client.put_object(Bucket="tamper", Key=f".blobs/{sha}", Body=b"evil weights")
    with pytest.raises(IntegrityError, match="sha256"):
        store.fetch("m")
    cached = tmp_path / "cache" / "tamper" / "_" / "m"
    assert not (cached / "model.pt").exists(), "a file that failed its check never lands in the cache"


def test_wrong_credentials_and_unreachable_store_are_one_line(s3_endpoint: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _make_bucket(s3_endpoint, "creds")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StoreError, match="AWS_ACCESS_KEY_ID"):
        _store(s3_endpoint, tmp_path, "s3://creds").list_ids()
    with pytest.raises(StoreError, match="failed"):
        _store("http://127.0.0.1:9", tmp_path, "s3://creds").list_ids()


def test_cli_lists_s3_store(s3_endpoint: str, tmp_path: Path) -> None:
    _make_bucket(s3_endpoint, "cli")
    store = _store(s3_endpoint, tmp_path, "s3://cli/p")
    src, manifest = _folder(tmp_path, "cli-model", b"w")
    store.push(src, manifest)
    env = {**os.environ, "SHOAL_S3_ENDPOINT_URL": s3_endpoint, "SHOAL_CACHE_DIR": str(tmp_path / "c")}
    shoal = [sys.executable, "-m", "shoal.cli"]
    out = subprocess.run([*shoal, "models", "list", "--store", "s3://cli/p", "--json"], env=env,
                         capture_output=True, text=True, check=True)
    assert '"id": "cli-model"' in out.stdout
    pulled = subprocess.run([*shoal, "models", "pull", "cli-model", str(tmp_path / "out"), "--store", "s3://cli/p"],
                            env=env, capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "out" / "cli-model" / "model.pt").read_bytes() == b"w"
    bad = subprocess.run([*shoal, "models", "list", "--store", "s3://cli/p"], capture_output=True, text=True,
                         env={**env, "SHOAL_S3_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
