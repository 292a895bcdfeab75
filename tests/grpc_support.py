"""A real `shoal serve --grpc-port 0` and its gRPC address, for tests that use Triton's own client."""

from __future__ import annotations

import re
import time
from pathlib import Path

from shoal.store import open_store
from shoal.store.base import ModelStore
from shoal.trace.tiny import make_tiny_model
from tests.detector_support import make_tiny_detector
from tests.server_fixtures import ServerProcess, add_broken_copy

_ADDRESS = re.compile(r"KServe v2 gRPC at (\S+)")


def grpc_target(proc: ServerProcess, timeout_s: float = 30.0) -> str:
    """``host:port`` of the server's gRPC endpoint, from its startup line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in list(proc.lines):
            match = _ADDRESS.search(line)
            if match:
                return match.group(1)
        if proc.proc is not None and proc.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"the server printed no gRPC address: {' | '.join(proc.lines)}")


def start_grpc_server(args: list[str], env: dict[str, str] | None = None,
                      wait_ready: bool = True) -> tuple[ServerProcess, str]:
    proc = ServerProcess([*args, "--grpc-port", "0"], env=env or {}).start(wait_ready=wait_ready)
    try:
        return proc, grpc_target(proc)
    except RuntimeError:
        proc.stop()
        raise


def mixed_store(root: Path) -> ModelStore:
    """A classifier, a QA model, the tiny detector, and ``broken`` (a classifier with corrupted weights)."""
    store = open_store(f"file://{root / 'store'}")
    make_tiny_model(store, "tiny-cls", task="classification", seed=0, build_dir=root / "build")
    make_tiny_model(store, "tiny-qa", task="question-answering", seed=3, build_dir=root / "build")
    make_tiny_detector(store, "tiny-det", root / "build-det")
    add_broken_copy(store, root / "store", "tiny-cls")
    return store
