"""Fixtures for server tests: a store of tiny models and real `shoal serve` processes on loopback.

Import the fixtures into a test module with ``from tests.server_fixtures import *``-free explicit
names (pytest finds fixtures imported into the module namespace).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from shoal.store import open_store
from shoal.store.base import ModelStore
from shoal.trace.tiny import make_tiny_model

REPO = Path(__file__).resolve().parents[1]
TINY = {"tiny-cls": ("classification", 0), "tiny-cls2": ("classification", 1), "tiny-emb": ("embedding", 2),
        "tiny-qa": ("question-answering", 3)}


_CACHE: list[Path] = []


def test_cache_dir() -> Path:
    """One disk-cache folder for the servers of this test session, never the repo's or the user's."""
    if not _CACHE:
        _CACHE.append(Path(tempfile.mkdtemp(prefix="shoal-test-cache-")))
    return _CACHE[0]


test_cache_dir.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@dataclass
class ServerProcess:
    """One `shoal serve` child process; ``url`` once it is listening."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    lines: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True, timeout_s: float = 60.0) -> "ServerProcess":
        cmd = [sys.executable, "-m", "shoal.cli", "serve", "--port", "0", *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "SHOAL_CACHE_DIR": str(test_cache_dir()), **self.env}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not self.url:
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError(f"server exited with {self.proc.returncode}: {' | '.join(self.lines)}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start: {' | '.join(self.lines)}")
            time.sleep(0.05)
        if wait_ready:
            while httpx.get(self.url + "/v2/health/ready", timeout=10).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("server never became ready")
                time.sleep(0.05)
        return self

    def _drain(self) -> None:
        assert self.proc and self.proc.stderr
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if "listening on " in line and not self.url:
                self.url = line.rsplit("listening on ", 1)[1].strip()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)  # type: ignore[arg-type]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """Four tiny traced models plus ``broken`` (its weights corrupted after tracing)."""
    root = tmp_path_factory.mktemp("server-store")
    store = open_store(f"file://{root / 'store'}")
    for model_id, (task, seed) in TINY.items():
        make_tiny_model(store, model_id, task=task, seed=seed, build_dir=root / "build")
    add_broken_copy(store, root / "store", "tiny-cls")
    return store


def add_broken_copy(store: ModelStore, root: Path, src: str, dst: str = "broken") -> None:
    """``dst``: a copy of ``src`` under its own id whose weights file is then corrupted on disk
    (its manifest still names the good sha256, so every load of it must fail its check).

    The copy's weights get a few bytes of their own first (so their sha256 is no other model's: a store
    and a disk tier that keep contents by sha256 would rightly serve ``src``'s intact bytes for a shared
    one), and the folder is written as plain files, as a store written before blobs has them."""
    from shoal.store.manifest import FileEntry
    from shoal.store.digests import hash_file

    shutil.copytree(root / src, root / dst)
    manifest = store.read_manifest(src)
    name = manifest.weights or manifest.artifact
    path = root / dst / name
    data = path.read_bytes() + dst.encode()
    path.unlink()  # the copy may be a hard link to a blob: never write through it
    path.write_bytes(data)
    files = {**manifest.files, name: FileEntry(sha256=hash_file(path), size=len(data))}
    manifest = manifest.model_copy(update={"id": dst, "files": files})
    (root / dst / "shoal.json").write_text(manifest.model_dump_json(indent=2))
    with open(path, "r+b") as fh:
        fh.seek(100)
        fh.write(b"corrupted")


@pytest.fixture(scope="session")
def store_uri(tiny_store: ModelStore) -> str:
    return tiny_store.uri


@pytest.fixture(scope="module")
def server(store_uri: str) -> Iterator[ServerProcess]:
    """A default server over the whole tiny store (two executors, everything preloaded)."""
    proc = ServerProcess(["--store", store_uri, "--executors", "2", "--threads", "1"]).start()
    yield proc
    proc.stop()
