"""Fixtures and helpers shared by the async-inference tests (imported by tests/test_jobs*.py, test_async*.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from shoal.store.local import LocalStore
from shoal.trace.tiny import make_tiny_model
from tests.redis_server import start_redis
from tests.server_fixtures import add_broken_copy


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on loopback, for the whole session (tests use their own key prefix)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


class Receiver:
    """A real HTTP server on loopback that records webhook deliveries; can fail the first N."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[dict] = []
        self.fail_left = fail_first
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with outer.lock:
                    if outer.fail_left > 0:
                        outer.fail_left -= 1
                        self.send_response(503)
                        self.end_headers()
                        return
                    outer.received.append({"path": self.path, "headers": {k.lower(): v for k, v in
                                                                          self.headers.items()},
                                           "body": body})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict]:
        with self.lock:
            return [json.loads(r["body"]) for r in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def valid_signature(secret: str, delivery: dict) -> bool:
    """Check a delivery the way a receiver would: HMAC-SHA256 over 'timestamp.body'."""
    ts = delivery["headers"]["x-shoal-timestamp"]
    expected = hmac.new(secret.encode(), ts.encode() + b"." + delivery["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(delivery["headers"]["x-shoal-signature"], f"sha256={expected}")


def result_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "results").rglob("*") if p.is_file())


def clone_model(root: Path, src: str, dst: str) -> None:
    """A copy of a traced model under another id (same files, manifest id changed): cheaper than tracing."""
    import shutil

    shutil.copytree(root / src, root / dst)
    manifest = json.loads((root / dst / "shoal.json").read_text())
    manifest["id"] = dst
    (root / dst / "shoal.json").write_text(json.dumps(manifest))


_BUILT: dict[str, str] = {}  # one build per session, though each test module imports the fixture


@pytest.fixture(scope="session")
def async_models(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store URI with tiny-a, tiny-b (classifiers) and broken (its weights corrupted: every load fails)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        _BUILT[key] = _build_models(tmp_path_factory.mktemp("async-models"))
    return _BUILT[key]


def _build_models(root: Path) -> str:
    store = LocalStore(root / "store")
    make_tiny_model(store, "tiny-a", task="classification", build_dir=root / "build")
    clone_model(root / "store", "tiny-a", "tiny-b")
    add_broken_copy(store, root / "store", "tiny-a")
    return store.uri


def wait_for(predicate, timeout_s: float = 60.0, every_s: float = 0.05, what: str = "condition"):  # type: ignore
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)


def env_for(tmp: Path, queue: str, **extra: str) -> dict[str, str]:
    """Environment of a server or worker with its own state dir, queue and job store."""
    return {"SHOAL_STATE_DIR": str(tmp / "state"), "SHOAL_ASYNC_QUEUE": queue,
            "SHOAL_ASYNC_STORE": f"file://{tmp / 'jobs'}", "SHOAL_CACHE_DIR": str(tmp / "cache"), **extra}
