"""NVIDIA's own HTTP client (``tritonclient[http]``, default settings) against a real ``shoal serve``.

Default settings mean Triton's binary tensor data extension both ways: inputs travel as raw
bytes after a JSON header and outputs come back the same way. Answers must equal the native
protocol's on the same inputs; the repository extension loads and unloads through the registry.
"""

from __future__ import annotations

import base64
from typing import Iterator

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from shoal.store import open_store
from shoal.store.base import ModelStore
from shoal.trace.tiny import make_tiny_model
from tests.detector_support import encode, make_tiny_detector, scene
from tests.server_fixtures import ServerProcess

TOKEN = "triton-token-41a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEXTS = ["The delivery was fast and the product works well.", "Terrible, it broke after a day."]


@pytest.fixture(scope="module")
def triton_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    root = tmp_path_factory.mktemp("triton")
    store = open_store(f"file://{root / 'store'}")
    make_tiny_model(store, "tiny-cls", task="classification", build_dir=root / "build")
    make_tiny_model(store, "tiny-qa", task="question-answering", seed=3, build_dir=root / "build")
    make_tiny_detector(store, "tiny-det", root / "det")
    return store


@pytest.fixture(scope="module")
def server(triton_store: ModelStore) -> Iterator[ServerProcess]:
    proc = ServerProcess(["--store", triton_store.uri, "--executors", "1", "--threads", "1"],
                         env={"SHOAL_TOKEN": TOKEN}).start()
    yield proc
    proc.stop()


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def text_input(texts: list[str], binary: bool = True) -> triton.InferInput:
    t = triton.InferInput("text", [len(texts)], "BYTES")
    t.set_data_from_numpy(np.array([s.encode() for s in texts], dtype=object), binary_data=binary)
    return t


def native(server: ServerProcess, model_id: str, body: dict) -> dict:
    with server.client() as c:
        resp = c.post(f"/predictions/{model_id}", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])
    model = client.get_model_metadata("tiny-cls")
    assert model["name"] == "tiny-cls" and [t["name"] for t in model["inputs"]] == ["text"]
    assert [t["name"] for t in model["outputs"]] == ["label", "scores"]
    assert client.is_model_ready("tiny-cls")


def test_text_classifier_with_default_binary_tensors(client: triton.InferenceServerClient,
                                                     server: ServerProcess) -> None:
    result = client.infer("tiny-cls", [text_input(TEXTS)])  # binary inputs; no outputs named: all binary
    outputs = result.get_response()["outputs"]
    assert all("binary_data_size" in o["parameters"] and "data" not in o for o in outputs)
    expected = native(server, "tiny-cls", {"inputs": TEXTS})["predictions"]
    labels = result.as_numpy("label")
    scores = result.as_numpy("scores")
    assert labels.dtype == object and [x.decode() for x in labels] == [p["label"] for p in expected]
    assert scores.dtype == np.float32 and scores.shape == (2, 2)
    np.testing.assert_allclose(scores, [[p["scores"][k] for k in ("negative", "positive")] for p in expected],
                               rtol=1e-5)


def test_outputs_chosen_one_by_one_json_or_binary(client: triton.InferenceServerClient) -> None:
    wanted = [triton.InferRequestedOutput("scores", binary_data=False), triton.InferRequestedOutput("label")]
    result = client.infer("tiny-cls", [text_input(TEXTS[:1], binary=False)], outputs=wanted)
    outputs = result.get_response()["outputs"]
    assert [o["name"] for o in outputs] == ["scores", "label"]
    assert "data" in outputs[0] and outputs[1]["parameters"]["binary_data_size"] > 0
    assert result.as_numpy("scores").shape == (1, 2) and result.as_numpy("label").shape == (1,)
    with pytest.raises(InferenceServerException) as err:
        client.infer("tiny-cls", [text_input(TEXTS)], outputs=[triton.InferRequestedOutput("logits")])
    assert err.value.status() == "400" and "logits" in err.value.message()


def test_question_answering_two_binary_inputs(client: triton.InferenceServerClient, server: ServerProcess) -> None:
    q, ctx = "Who sat down?", "Bob sat down on the bench."
    inputs = [triton.InferInput("question", [1], "BYTES"), triton.InferInput("context", [1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([q.encode()], dtype=object))
    inputs[1].set_data_from_numpy(np.array([ctx.encode()], dtype=object))
    result = client.infer("tiny-qa", inputs)
    expected = native(server, "tiny-qa", {"question": q, "context": ctx})["prediction"]
    assert result.as_numpy("answer")[0].decode() == expected["answer"]
    assert result.as_numpy("start").dtype == np.int64 and int(result.as_numpy("start")[0]) == expected["start"]


def test_detector_takes_raw_image_files(client: triton.InferenceServerClient, server: ServerProcess) -> None:
    files = [encode(scene(480, 320, seed=1)), encode(scene(640, 480, seed=2), "JPEG", quality=90)]
    image = triton.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(np.array(files, dtype=object))  # raw file bytes, binary: no base64
    rows = client.infer("tiny-det", [image]).as_numpy("detections")
    assert rows.dtype == np.float32 and rows.shape[1] == 7 and set(rows[:, 0].tolist()) == {0.0, 1.0}
    for index, data in enumerate(files):
        expected = native(server, "tiny-det", {"image": base64.b64encode(data).decode()})["prediction"]
        mine = rows[rows[:, 0] == index]
        assert len(mine) == len(expected["boxes"])
        np.testing.assert_allclose(mine[:, 1:5], expected["boxes"], atol=0.05)
        assert mine[:, 6].astype(int).tolist() == expected["classes"]
    # JSON tensors carry the files in base64, as before
    b64 = triton.InferInput("image", [1], "BYTES")
    b64.set_data_from_numpy(np.array([base64.b64encode(files[0]).decode()], dtype=object), binary_data=False)
    as_json = client.infer("tiny-det", [b64], outputs=[triton.InferRequestedOutput("detections", binary_data=False)])
    np.testing.assert_allclose(as_json.as_numpy("detections"), rows[rows[:, 0] == 0], atol=1e-4)


def test_unknown_model(client: triton.InferenceServerClient) -> None:
    for call in (lambda: client.get_model_metadata("no-such-model"),
                 lambda: client.infer("no-such-model", [text_input(TEXTS)])):
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == "404" and "no-such-model" in err.value.message()
    assert not client.is_model_ready("no-such-model")
    with pytest.raises(InferenceServerException) as err:
        client.load_model("no-such-model", headers=AUTH)
    assert err.value.status() == "404"


def test_repository_index_load_and_unload(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as err:
        client.get_model_repository_index()  # the same token as /models guards the repository
    assert err.value.status() == "401"
    client.load_model("tiny-cls", headers=AUTH)
    index = {m["name"]: m for m in client.get_model_repository_index(headers=AUTH)}
    assert set(index) == {"tiny-cls", "tiny-qa", "tiny-det"}
    assert index["tiny-cls"]["state"] == "READY"
    client.unload_model("tiny-cls", headers=AUTH)
    after = {m["name"]: m for m in client.get_model_repository_index(headers=AUTH)}
    assert after["tiny-cls"]["state"] == "UNAVAILABLE" and after["tiny-cls"]["reason"] == "unloaded"
    assert not client.is_model_ready("tiny-cls")
    client.load_model("tiny-cls", headers=AUTH)
    assert client.is_model_ready("tiny-cls")
    client.unload_model("tiny-cls", headers=AUTH)
    client.infer("tiny-cls", [text_input(TEXTS)])  # unloaded, not removed: a request loads it again
    assert client.is_model_ready("tiny-cls")
    with pytest.raises(InferenceServerException) as err:
        client.load_model("tiny-cls", headers=AUTH, config='{"max_batch_size": 8}')
    assert err.value.status() == "400" and "config" in err.value.message()


def test_repository_ready_filter(server: ServerProcess, client: triton.InferenceServerClient) -> None:
    client.load_model("tiny-qa", headers=AUTH)
    with server.client(headers=AUTH) as c:
        ready = c.post("/v2/repository/index", json={"ready": True}).json()
        assert "tiny-qa" in {m["name"] for m in ready} and {m["state"] for m in ready} == {"READY"}
        assert c.get("/v2/repository/index").status_code == 200


@pytest.mark.parametrize("header, size, tail, status, words", [
    ("12", 9, b"", 400, "not valid JSON"),  # the length cuts the JSON header short
    ("abc", 9, b"", 400, "must be a number"),
    (None, 9, b"\x05\x00\x00\x00hello", 400, "Inference-Header-Content-Length"),  # binary data, no header
    ("LEN", 9, b"\x05\x00\x00\x00hell", 400, "runs past the 8 bytes"),  # binary_data_size over the data
    ("LEN", 8, b"\x05\x00\x00\x00hell", 422, "runs past the end"),  # a BYTES element longer than its data
    ("LEN", 9, b"\x05\x00\x00\x00hello!", 400, "belong to no input"),
])
def test_bad_binary_framing_is_a_clear_4xx(server: ServerProcess, header: str | None, size: int, tail: bytes,
                                           status: int, words: str) -> None:
    head = ('{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":%d}}]}'
            % size).encode()
    headers = {} if header is None else {"Inference-Header-Content-Length": str(len(head)) if header == "LEN"
                                         else header}
    with server.client() as c:
        resp = c.post("/v2/models/tiny-cls/infer", content=head + tail, headers=headers)
        assert resp.status_code == status and words in resp.json()["error"], resp.text
        assert c.post("/predictions/tiny-cls", json={"text": "still serving"}).status_code == 200
