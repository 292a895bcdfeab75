"""`shoal loadtest --protocol native|v2|grpc`: the same payloads over each protocol, against one real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from tritonclient.grpc import service_pb2 as pb

from shoal.loadtest.payload import load_payloads
from shoal.loadtest.protocols import grpc_inputs, grpc_model_prefix, v2_json, v2_tensors
from shoal.loadtest.served import ServerProcess, free_port
from shoal.server.grpc.tensors import request_from_proto
from shoal.store.local import LocalStore
from shoal.trace.tiny import make_tiny_model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    root = tmp_path_factory.mktemp("lt-protocols")
    store = LocalStore(root / "store")
    make_tiny_model(store, "tiny-cls", build_dir=root / "build")
    make_tiny_model(store, "tiny-qa", task="question-answering", seed=3, build_dir=root / "build")
    grpc_port = free_port()
    with ServerProcess(store.uri, root / "serve.log", {"grpc_port": str(grpc_port)}) as srv:
        yield srv, grpc_port


def loadtest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal.cli", "loadtest", *args, "--no-progress"],
                          capture_output=True, text=True, timeout=120)


def test_native_bodies_become_the_same_v2_tensors() -> None:
    assert v2_tensors({"text": "hi"}) == [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]
    assert [t["name"] for t in v2_tensors({"question": "q?", "context": "c."})] == ["question", "context"]
    batch = v2_tensors({"inputs": [{"question": "a", "context": "b"}, {"question": "c", "context": "d"}]})
    assert [t["data"] for t in batch] == [["a", "c"], ["b", "d"]]
    already = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5]}]}
    assert v2_tensors(already) == already["inputs"]
    assert json.loads(v2_json(b'{"inputs": ["a", "b"]}'))["inputs"][0]["shape"] == [2]


def test_grpc_bodies_are_requests_the_server_reads() -> None:
    """Pool body + model prefix is one ModelInferRequest, which the server's own codec decodes."""
    pool = load_payloads("builtin")
    for native in pool.bodies("question-answering")[:3]:
        raw = grpc_model_prefix("tiny-qa") + grpc_inputs(native)
        msg = pb.ModelInferRequest.FromString(raw)
        assert msg.model_name == "tiny-qa" and len(msg.raw_input_contents) == 2
        decoded = request_from_proto(msg)
        sent = json.loads(native)
        assert [t.values() for t in decoded.inputs] == [[sent["question"].encode()], [sent["context"].encode()]]


@pytest.mark.parametrize("protocol", ["native", "v2", "grpc"])
def test_same_load_over_each_protocol(server: tuple[ServerProcess, int], protocol: str, tmp_path: Path) -> None:
    srv, grpc_port = server
    target = f"grpc://127.0.0.1:{grpc_port}" if protocol == "grpc" else srv.url
    out = tmp_path / "run.json"
    proc = loadtest("--target", target, "--protocol", protocol, "--clients", "4", "--duration", "1s",
                    "--warmup", "0.2s", "--ceiling", "off", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["protocol"] == protocol and doc["errors"] == 0 and doc["ok"] > 10
    assert set(doc["per_model"]) == {"tiny-cls", "tiny-qa"}  # listed over the protocol's own API


def test_grpc_errors_are_counted_by_code(server: tuple[ServerProcess, int], tmp_path: Path) -> None:
    out = tmp_path / "err.json"
    proc = loadtest("--target", f"grpc://127.0.0.1:{server[1]}", "--protocol", "grpc", "--model-ids",
                    "tiny-cls,no-such-model", "--single", "sequential", "--requests", "3", "--json", str(out))
    assert proc.returncode == 1 and "exceeds --max-error-rate" in proc.stderr
    doc = json.loads(out.read_text())
    assert doc["errors_by_kind"] == {"grpc_not_found": 3} and doc["ok"] == 3


def test_wrong_targets_are_one_line(server: tuple[ServerProcess, int]) -> None:
    srv, grpc_port = server
    for args, needle in ((["--target", srv.url, "--protocol", "grpc"], "grpc://HOST:PORT"),
                         (["--target", srv.url, "--protocol", "soap"], "native, v2 or grpc"),
                         (["--plan", "plan.json", "--protocol", "grpc"], "one server")):
        proc = loadtest(*args)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert proc.returncode != 0 and len(errors) == 1 and needle in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr
