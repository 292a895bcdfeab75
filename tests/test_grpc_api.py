"""KServe v2 gRPC with NVIDIA's own client (`tritonclient.grpc`, default settings) against a real `shoal serve`.

Health, metadata, inference on a text classifier, a QA model and the detector, the repository
calls behind the bearer token, every error as its gRPC status code, and the same metrics and
backpressure as HTTP. The process keeps serving after each error.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Iterator

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg
from tritonclient.utils import InferenceServerException

from shoal.store.base import ModelStore
from tests.detector_support import encode, scene
from tests.grpc_support import mixed_store, start_grpc_server
from tests.server_fixtures import ServerProcess

TOKEN = "grpc-token-5e1"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BODY_CAP = 1_000_000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    return mixed_store(tmp_path_factory.mktemp("grpc"))


@pytest.fixture(scope="module")
def served(store: ModelStore) -> Iterator[tuple[ServerProcess, str]]:
    env = {"SHOAL_TOKEN": TOKEN, "SHOAL_MAX_QUEUE_PER_MODEL": "8", "SHOAL_MAX_BODY_BYTES": str(BODY_CAP)}
    proc, target = start_grpc_server(["--store", store.uri, "--executors", "1", "--threads", "1"], env)
    yield proc, target
    proc.stop()


@pytest.fixture
def client(served: tuple[ServerProcess, str]) -> Iterator[tg.InferenceServerClient]:
    c = tg.InferenceServerClient(served[1])
    yield c
    c.close()


def texts(name: str, values: list[str]) -> tg.InferInput:
    t = tg.InferInput(name, [len(values)], "BYTES")
    t.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object))
    return t


def status_of(call: object) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()  # type: ignore[operator]
    return str(info.value.status()), str(info.value.message())


def test_live_ready_and_server_metadata(client: tg.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "shoal" and "model_repository" in meta.extensions
    assert client.is_model_ready("tiny-cls") and not client.is_model_ready("broken")


def test_model_metadata_matches_http(client: tg.InferenceServerClient, served: tuple[ServerProcess, str]) -> None:
    meta = client.get_model_metadata("tiny-cls")
    http = httpx.get(f"{served[0].url}/v2/models/tiny-cls", timeout=10).json()
    assert meta.name == "tiny-cls" and list(meta.versions) == ["1"] and meta.platform == http["platform"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == \
        [(t["name"], t["datatype"], t["shape"]) for t in http["inputs"]]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == \
        [(t["name"], t["datatype"], t["shape"]) for t in http["outputs"]]
    det = client.get_model_metadata("tiny-det", as_json=True)
    assert det["inputs"][0]["name"] == "image" and det["outputs"][0]["shape"] == ["-1", "7"]


def test_infer_classifier_raw_like_http(client: tg.InferenceServerClient, served: tuple[ServerProcess, str]) -> None:
    sentences = ["The delivery was fast.", "Nothing worked at all, ever."]
    result = client.infer("tiny-cls", [texts("text", sentences)])
    labels, scores = result.as_numpy("label"), result.as_numpy("scores")
    body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": sentences}]}
    http = httpx.post(f"{served[0].url}/v2/models/tiny-cls/infer", json=body, timeout=30).json()["outputs"]
    assert [x.decode() for x in labels] == http[0]["data"]
    assert scores.shape == (2, 2) and np.allclose(scores.reshape(-1), http[1]["data"], atol=1e-5)
    response = result.get_response()
    assert response.model_name == "tiny-cls" and response.parameters["batch_size"].int64_param >= 1
    only = client.infer("tiny-cls", [texts("text", sentences)], outputs=[tg.InferRequestedOutput("scores")])
    assert [o.name for o in only.get_response().outputs] == ["scores"]


def test_infer_typed_contents_answer_typed(served: tuple[ServerProcess, str]) -> None:
    """A client that sends ``contents`` (not raw) gets typed ``contents`` back, as KServe clients expect."""
    with grpc.insecure_channel(served[1]) as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="tiny-qa", id="q1")
        for name, value in (("question", b"Who resolved it?"), ("context", b"The support agent resolved it.")):
            req.inputs.add(name=name, datatype="BYTES", shape=[1]).contents.bytes_contents.append(value)
        resp = stub.ModelInfer(req)
    assert resp.id == "q1" and not resp.raw_output_contents
    outputs = {o.name: o for o in resp.outputs}
    assert set(outputs) == {"answer", "score", "start", "end"}
    assert len(outputs["answer"].contents.bytes_contents) == 1 and len(outputs["score"].contents.fp32_contents) == 1
    assert outputs["start"].contents.int64_contents[0] <= outputs["end"].contents.int64_contents[0]


def test_infer_detector_raw_image_bytes(client: tg.InferenceServerClient, served: tuple[ServerProcess, str]) -> None:
    """The image file goes as one raw BYTES element (no base64); boxes match the HTTP v2 answer."""
    png = encode(scene(seed=4))
    image = tg.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([png], dtype=object))
    detections = client.infer("tiny-det", [image]).as_numpy("detections")
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png).decode()]}]}
    http = httpx.post(f"{served[0].url}/v2/models/tiny-det/infer", json=body, timeout=30).json()["outputs"][0]
    assert detections.dtype == np.float32 and list(detections.shape) == http["shape"] and http["shape"][1] == 7
    assert http["shape"][0] > 0, "the scene should give the tiny detector some boxes"
    assert np.allclose(detections.reshape(-1), http["data"], atol=1e-3)
    empty = tg.InferInput("image", [1], "BYTES")
    empty.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    code, message = status_of(lambda: client.infer("tiny-det", [empty]))
    assert code == "StatusCode.INVALID_ARGUMENT", message


def test_unknown_and_invalid_models(client: tg.InferenceServerClient) -> None:
    for call in (lambda: client.get_model_metadata("no-such-model"), lambda: client.is_model_ready("no-such-model"),
                 lambda: client.infer("no-such-model", [texts("text", ["x"])])):
        code, message = status_of(call)
        assert code == "StatusCode.NOT_FOUND" and "no-such-model" in message
    code, _ = status_of(lambda: client.get_model_metadata("../etc/passwd"))
    assert code == "StatusCode.INVALID_ARGUMENT"
    code, _ = status_of(lambda: client.get_model_metadata("tiny-cls", model_version="7"))
    assert code == "StatusCode.NOT_FOUND"


def test_bad_tensors_are_invalid_argument(client: tg.InferenceServerClient, served: tuple[ServerProcess, str]) -> None:
    numbers = tg.InferInput("text", [1], "FP32")
    numbers.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    assert "BYTES" in status_of(lambda: client.infer("tiny-cls", [numbers]))[1]
    lying = pb.ModelInferRequest(model_name="tiny-cls")
    lying.inputs.add(name="text", datatype="BYTES", shape=[3]).contents.bytes_contents.append(b"one")
    not_utf8 = pb.ModelInferRequest(model_name="tiny-cls")
    not_utf8.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"\xff\xfe")
    truncated = pb.ModelInferRequest(model_name="tiny-cls", raw_input_contents=[b"\x09\x00\x00\x00abc"])
    truncated.inputs.add(name="text", datatype="BYTES", shape=[1])
    unknown_output = pb.ModelInferRequest(model_name="tiny-cls", outputs=[{"name": "logits"}])
    unknown_output.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"x")
    with grpc.insecure_channel(served[1]) as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        for req, words in ((lying, "3 elements"), (not_utf8, "UTF-8"), (truncated, "runs past"),
                           (unknown_output, "no such output"), (pb.ModelInferRequest(model_name="tiny-cls"), "input")):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(req)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert words in info.value.details(), info.value.details()


def test_backpressure_and_size_cap(served: tuple[ServerProcess, str]) -> None:
    """Over the per-model queue bound: RESOURCE_EXHAUSTED with retry-after; over the body cap: the same code."""
    with grpc.insecure_channel(served[1]) as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="tiny-cls")
        req.inputs.add(name="text", datatype="BYTES", shape=[9]).contents.bytes_contents.extend([b"x"] * 9)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(req)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit 8" in info.value.details()
        assert ("retry-after", "1") in tuple(info.value.trailing_metadata())
        big = pb.ModelInferRequest(model_name="tiny-cls")
        big.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"a" * (BODY_CAP + 1))
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(big)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.ServerLive(pb.ServerLiveRequest()).live


def test_repository_index_load_unload_behind_token(client: tg.InferenceServerClient,
                                                    served: tuple[ServerProcess, str]) -> None:
    code, message = status_of(client.get_model_repository_index)
    assert code == "StatusCode.UNAUTHENTICATED" and "Bearer" in message
    code, _ = status_of(lambda: client.unload_model("tiny-cls", headers={"authorization": "Bearer wrong"}))
    assert code == "StatusCode.UNAUTHENTICATED"
    index = {m["name"]: m for m in client.get_model_repository_index(headers=AUTH, as_json=True)["models"]}
    assert index["tiny-cls"]["state"] == "READY"
    assert index["broken"]["state"] == "UNAVAILABLE" and "sha256" in index["broken"]["reason"]

    client.unload_model("tiny-qa", headers=AUTH)
    assert not client.is_model_ready("tiny-qa")
    index = {m["name"]: m for m in client.get_model_repository_index(headers=AUTH, as_json=True)["models"]}
    assert index["tiny-qa"]["state"] == "UNAVAILABLE"
    with grpc.insecure_channel(served[1]) as channel:
        ready_only = pbg.GRPCInferenceServiceStub(channel).RepositoryIndex(pb.RepositoryIndexRequest(ready=True),
                                                                           metadata=tuple(AUTH.items()))
    assert "tiny-qa" not in {m.name for m in ready_only.models} and "tiny-cls" in {m.name for m in ready_only.models}
    client.load_model("tiny-qa", headers=AUTH)
    assert client.is_model_ready("tiny-qa")

    code, message = status_of(lambda: client.load_model("broken", headers=AUTH))
    assert code == "StatusCode.UNAVAILABLE" and "sha256" in message
    code, _ = status_of(lambda: client.load_model("no-such-model", headers=AUTH))
    assert code == "StatusCode.NOT_FOUND"
    code, message = status_of(lambda: client.load_model("tiny-cls", headers=AUTH, config='{"max_batch_size": 4}'))
    assert code == "StatusCode.INVALID_ARGUMENT" and "config" in message
    assert client.infer("tiny-cls", [texts("text", ["still serving"])]).as_numpy("label").shape == (1,)


def test_same_metrics_as_http(client: tg.InferenceServerClient, served: tuple[ServerProcess, str]) -> None:
    def count(metrics: str, model: str, status: str) -> float:
        key = f'shoal_inference_requests_total{{model="{model}",status="{status}"}} '
        line = next((ln for ln in metrics.splitlines() if ln.startswith(key)), key + "0")
        return float(line.split()[-1])

    url = f"{served[0].url}/metrics"
    before = httpx.get(url, timeout=10).text
    client.infer("tiny-cls", [texts("text", ["counted once"])])
    status_of(lambda: client.infer("no-such-model", [texts("text", ["x"])]))
    after = httpx.get(url, timeout=10).text
    assert count(after, "tiny-cls", "200") == count(before, "tiny-cls", "200") + 1
    assert count(after, "_unknown_", "404") == count(before, "_unknown_", "404") + 1
    assert 'status="500"' not in after
    assert "Traceback" not in "\n".join(served[0].lines)


def test_not_ready_until_preload_is_done(tmp_path: Path) -> None:
    """A store that cannot be reached keeps the server not ready on gRPC as on HTTP; it stays live."""
    env = {"SHOAL_S3_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
           "SHOAL_CACHE_DIR": str(tmp_path / "cache"), "SHOAL_STATE_DIR": str(tmp_path / "state")}
    proc, target = start_grpc_server(["--store", "s3://nowhere/models", "--executors", "1"], env, wait_ready=False)
    try:
        with tg.InferenceServerClient(target) as c:
            assert c.is_server_live() and not c.is_server_ready()
        assert httpx.get(f"{proc.url}/v2/health/ready", timeout=10).status_code == 503
    finally:
        proc.stop()


def test_taken_grpc_port_is_one_clear_line(store: ModelStore) -> None:
    import socket

    from tests.server_fixtures import run_cli

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        done = run_cli("serve", "--store", store.uri, "--port", "0", "--grpc-port", str(port), timeout=120)
    assert done.returncode != 0 and f"gRPC port {port}" in done.stderr and "Traceback" not in done.stderr
