"""`shoal loadtest --target` against a server holding text models and a detector (issue 13, item 1).

The README's load test used to send text bodies to yolov8n: 26 % of requests failed with 422.
Each model must get a body of its own kind by default, over every protocol: JSON text for text
models, JPEG frames for detectors (raw bytes natively and over gRPC, base64 in KServe v2 JSON).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from shoal.store import open_store
from shoal.store.base import ModelStore
from shoal.trace.tiny import make_tiny_model
from tests.detector_support import make_tiny_detector
from shoal.loadtest.served import free_port
from tests.server_fixtures import ServerProcess, run_cli

MODELS = {"mix-cls": "classification", "mix-qa": "question-answering", "mix-det": "detection"}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    """A server with a classifier, a QA model and a detector; HTTP, and gRPC on the returned port."""
    root = tmp_path_factory.mktemp("mixed")
    store: ModelStore = open_store(f"file://{root / 'store'}")
    make_tiny_model(store, "mix-cls", task="classification", build_dir=root / "build")
    make_tiny_model(store, "mix-qa", task="question-answering", seed=3, build_dir=root / "build")
    make_tiny_detector(store, "mix-det", root / "build" / "det")
    grpc_port = free_port()
    proc = ServerProcess(["--store", store.uri, "--executors", "1", "--threads", "1",
                          "--grpc-port", str(grpc_port)]).start()
    yield proc, grpc_port
    proc.stop()


@pytest.mark.parametrize("choice, protocol", [("random", "native"), ("sequential", "native"), ("random", "v2"),
                                              ("random", "grpc")])
def test_target_load_test_sends_each_model_its_own_kind_of_body(mixed: tuple[ServerProcess, int], tmp_path: Path,
                                                                choice: str, protocol: str) -> None:
    server, grpc_port = mixed
    out = tmp_path / "run.json"
    target = f"grpc://127.0.0.1:{grpc_port}" if protocol == "grpc" else server.url
    proc = run_cli("loadtest", "--target", target, "--protocol", protocol, "--clients", "6", "--duration", "2s",
                   "--models", choice, "--ceiling", "off", "--no-progress", "--json", str(out), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["errors"] == 0, doc.get("error_examples") or doc
    assert set(doc["per_model"]) == set(MODELS)
    for model in MODELS:
        assert doc["per_model"][model]["ok"] > 0, (model, doc["per_model"][model])


def test_named_models_learn_their_tasks_too(mixed: tuple[ServerProcess, int], tmp_path: Path) -> None:
    """--model-ids with --target: the tasks still come from the server's listing."""
    out = tmp_path / "named.json"
    proc = run_cli("loadtest", "--target", mixed[0].url, "--model-ids", "mix-det,mix-qa", "--single", "sequential",
                   "--requests", "3", "--no-progress", "--json", str(out), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["errors"] == 0 and doc["ok"] == 6, doc
