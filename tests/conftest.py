"""Shared fixtures: temporary stores, tiny traced models, the real MiniLM (traced once), a real S3 server."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# What shoal caches while the tests run (servers' disk tier, trace intermediates) goes to a temporary
# folder removed at exit, never the user's ~/.cache/shoal; servers and CLIs the tests start inherit it.
if not os.environ.get("SHOAL_CACHE_DIR"):
    os.environ["SHOAL_CACHE_DIR"] = tempfile.mkdtemp(prefix="shoal-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SHOAL_CACHE_DIR"], True)

from shoal.store.local import LocalStore  # noqa: E402


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def build_dir(tmp_path: Path) -> Path:
    return tmp_path / "build"


@pytest.fixture(scope="session")
def minilm_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, Path]:
    """The real all-MiniLM-L6-v2 classifier, traced once per session at fp32 (isolated profile)."""
    from shoal.spec import load_spec
    from shoal.trace.stage import TraceOptions, trace_spec

    root = tmp_path_factory.mktemp("minilm")
    store = LocalStore(root / "store")
    spec = load_spec(Path(__file__).parent.parent / "models" / "minilm-cls.yaml")
    trace_spec(spec, store, TraceOptions(precision="fp32", build_dir=root / "build", batch_sizes=[1, 4]))
    return store, root / "build"


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real SeaweedFS S3 server on loopback, with test credentials in the environment."""
    from tests.s3_server import ACCESS_KEY, SECRET_KEY, start_seaweedfs

    server = start_seaweedfs(tmp_path_factory.mktemp("s3"))
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
    try:
        yield server.endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (the long reliability variants) run only with SHOAL_LONG_TESTS=1."""
    if os.environ.get("SHOAL_LONG_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="long variant: run with SHOAL_LONG_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def reliability_store(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """Tiny good models, a tampered one, a slow one and crafted pickles (tests/reliability_support.py)."""
    from tests.reliability_support import build_reliability_store

    return build_reliability_store(tmp_path_factory.mktemp("reliability"))
