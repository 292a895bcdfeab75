"""Detector models over HTTP (a real `shoal serve`): image bytes, multipart, base64, KServe v2, bad images.

Uses a tiny YOLO-shaped TorchScript detector (tests/detector_support.py); the match
against Ultralytics itself is in test_detector_ultralytics.py.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
import torch

from shoal.store import open_store
from shoal.store.base import ModelStore
from shoal.trace.tiny import make_tiny_model
from shoal.vision.image import decode_image
from shoal.vision.letterbox import letterbox
from shoal.vision.postprocess import DetectOptions, postprocess
from tests.detector_support import CLASSES, SIZE, encode, make_tiny_detector, scene, unmatched
from tests.server_fixtures import ServerProcess

BODY_CAP = 300_000


@pytest.fixture(scope="module")
def det_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    root = tmp_path_factory.mktemp("det")
    store = open_store(f"file://{root / 'store'}")
    make_tiny_detector(store, "tiny-det", root / "build")
    make_tiny_model(store, "tiny-text", build_dir=root / "build")
    return store


@pytest.fixture(scope="module")
def det_server(det_store: ModelStore) -> Iterator[ServerProcess]:
    env = {"SHOAL_MAX_BODY_BYTES": str(BODY_CAP)}
    proc = ServerProcess(["--store", det_store.uri, "--executors", "1", "--threads", "1"], env=env).start()
    yield proc
    proc.stop()


def in_process(store: ModelStore, data: bytes, conf: float = 0.25) -> dict:
    """The detector run directly on one image: what the server must answer."""
    module = torch.jit.load(str(store.fetch("tiny-det") / "model.pt"))
    x, geo = letterbox(decode_image(data), SIZE)
    with torch.inference_mode():
        raw = module(x[None])
    det = postprocess(raw, [geo], [DetectOptions(conf=conf)])[0]
    return det.to_json(CLASSES)


def error_of(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    return str(resp.json()["error"])


def test_image_bytes_multipart_and_base64_give_the_in_process_detections(det_server: ServerProcess,
                                                                         det_store: ModelStore) -> None:
    data = encode(scene(800, 600, seed=3))
    expected = in_process(det_store, data)
    assert expected["boxes"], "the tiny detector should find something in the scene"
    with det_server.client() as c:
        raw = c.post("/predictions/tiny-det", content=data, headers={"Content-Type": "image/png"})
        multipart = c.post("/predictions/tiny-det", files={"image": ("frame.png", data, "image/png")})
        b64 = c.post("/predictions/tiny-det", json={"image": base64.b64encode(data).decode()})
        url = c.post("/predictions/tiny-det",
                     json={"image": "data:image/png;base64," + base64.b64encode(data).decode()})
    for resp in (raw, multipart, b64, url):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pred = body["prediction"]
        assert pred["width"] == 800 and pred["height"] == 600
        assert pred["classes"] == expected["classes"] and pred["names"] == expected["names"]
        assert not unmatched(pred, expected, 0.999)
        assert np.allclose(pred["scores"], expected["scores"], atol=1e-4)
        for box in pred["boxes"]:
            assert 0 <= box[0] <= box[2] <= 800 and 0 <= box[1] <= box[3] <= 600
        timings = body["timings"]
        assert timings["preprocess_ms"] > 0 and timings["inference_ms"] > 0 and timings["postprocess_ms"] > 0
        assert timings["total_ms"] >= timings["inference_ms"]


def test_options_from_query_form_and_json(det_server: ServerProcess, det_store: ModelStore) -> None:
    data = encode(scene(640, 360, seed=4))
    strict = in_process(det_store, data, conf=0.5)
    with det_server.client() as c:
        q = c.post("/predictions/tiny-det?conf=0.5", content=data, headers={"Content-Type": "image/png"}).json()
        f = c.post("/predictions/tiny-det", files={"image": ("f.png", data, "image/png")}, data={"conf": "0.5"}).json()
        j = c.post("/predictions/tiny-det", json={"image": base64.b64encode(data).decode(), "conf": 0.5}).json()
        one = c.post("/predictions/tiny-det?max_det=1&classes=0,2", content=data,
                     headers={"Content-Type": "image/png"}).json()
    for body in (q, f, j):
        assert body["prediction"]["scores"] == strict["scores"]
    assert len(one["prediction"]["boxes"]) <= 1 and set(one["prediction"]["classes"]) <= {0, 2}


def test_a_batch_of_images_in_one_request(det_server: ServerProcess) -> None:
    images = [base64.b64encode(encode(scene(320 + 40 * i, 240, seed=i))).decode() for i in range(3)]
    with det_server.client() as c:
        resp = c.post("/predictions/tiny-det", json={"inputs": [{"image": im} for im in images], "conf": 0.3})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert [p["width"] for p in preds] == [320, 360, 400]
    assert all(min(p["scores"], default=1) > 0.3 for p in preds)


def test_kserve_v2_infer_and_metadata(det_server: ServerProcess) -> None:
    data = base64.b64encode(encode(scene(300, 200))).decode()
    with det_server.client() as c:
        meta = c.get("/v2/models/tiny-det").json()
        resp = c.post("/v2/models/tiny-det/infer", json={
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [data, data]}]})
        native = c.post("/predictions/tiny-det", json={"image": data}).json()["prediction"]
    assert meta["outputs"][0]["name"] == "detections"
    assert resp.status_code == 200, resp.text
    out = resp.json()["outputs"][0]
    rows = np.array(out["data"]).reshape(out["shape"])
    assert out["shape"] == [2 * len(native["boxes"]), 7]
    assert sorted(set(rows[:, 0].tolist())) == ([0.0, 1.0] if native["boxes"] else [])


def test_bad_images_answer_4xx_naming_the_problem_and_the_server_keeps_serving(det_server: ServerProcess) -> None:
    jpeg = encode(scene(400, 300), "JPEG")
    huge = encode(scene(8000, 6000, shapes=0))  # 48 Mpx of flat colour: a small file, a large bitmap
    assert len(huge) < BODY_CAP
    png = {"Content-Type": "image/png"}
    with det_server.client() as c:
        assert "not an image" in error_of(c.post("/predictions/tiny-det", content=b"GIF? no, text", headers=png), 422)
        assert "truncated" in error_of(c.post("/predictions/tiny-det", content=jpeg[:len(jpeg) // 2],
                                              headers={"Content-Type": "image/jpeg"}), 422)
        assert "empty" in error_of(c.post("/predictions/tiny-det", content=b"", headers=png), 400)
        assert "exceeds the cap" in error_of(c.post("/predictions/tiny-det", content=huge, headers=png), 413)
        assert "exceeds the limit" in error_of(c.post("/predictions/tiny-det", content=b"\0" * (BODY_CAP + 1),
                                                      headers=png), 413)
        assert "base64" in error_of(c.post("/predictions/tiny-det", json={"image": "***"}), 422)
        assert "conf" in error_of(c.post("/predictions/tiny-det?conf=2", content=jpeg, headers=png), 422)
        assert "image" in error_of(c.post("/predictions/tiny-det", json={"text": "a sentence"}), 422)
        assert "no file part" in error_of(c.post("/predictions/tiny-det", files={"note": (None, "x")}), 400)
        mixed = c.post("/predictions/tiny-det", json={"inputs": [
            {"image": base64.b64encode(jpeg).decode()}, {"image": base64.b64encode(b"not an image").decode()}]})
        assert "not an image" in error_of(mixed, 422)
        to_text = c.post("/predictions/tiny-text", content=jpeg, headers={"Content-Type": "image/jpeg"})
        assert "got image/jpeg bytes" in error_of(to_text, 422)
        assert c.post("/predictions/tiny-text", json={"text": "still JSON"}).status_code == 200
        ok = c.post("/predictions/tiny-det", content=jpeg, headers={"Content-Type": "image/jpeg"})
        metrics = c.get("/metrics").text
    assert ok.status_code == 200 and det_server.proc and det_server.proc.poll() is None
    for stage in ("preprocess", "inference", "postprocess"):
        assert f'shoal_inference_compute_duration_seconds_count{{model="tiny-det",stage="{stage}"}}' in metrics


def test_trace_refuses_detector_specs_it_cannot_export(tmp_path: Path) -> None:
    from shoal.errors import UsageError
    from shoal.spec import ModelSpec, Source
    from shoal.trace.stage import TraceOptions, trace_spec

    store = open_store(f"file://{tmp_path / 'store'}")
    base = dict(id="d", kind="detector", task="detection", image_size=640)
    with pytest.raises(UsageError, match="inf1"):
        trace_spec(ModelSpec(source=Source(config="yolov8n.yaml"), **base), store, TraceOptions(processor="inf1"))
    with pytest.raises(UsageError, match="fp32 only"):
        trace_spec(ModelSpec(source=Source(config="yolov8n.yaml"), precision="bf16", **base), store, TraceOptions())
    with pytest.raises(UsageError, match="does not exist"):
        trace_spec(ModelSpec(source=Source(path=str(tmp_path / "missing.pt")), **base), store,
                   TraceOptions(build_dir=tmp_path / "build"))
    with pytest.raises(ValueError, match="go together"):
        ModelSpec(id="d", kind="detector", task="embedding", source=Source(config="yolov8n.yaml"))


def test_async_image_jobs_keep_their_query_options(det_store: ModelStore, tmp_path: Path) -> None:
    """`POST /async/predictions/{id}?conf=..` with image bytes runs with those options, as the synchronous route."""
    import json
    import time

    from tests.jobs_support import env_for

    env = env_for(tmp_path, f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    proc = ServerProcess(["--store", det_store.uri, "--models", "tiny-det", "--executors", "1", "--threads", "1"],
                         env=env).start()
    data = encode(scene(640, 360, seed=4))
    png = {"Content-Type": "image/png"}
    try:
        with proc.client() as c:
            sync = c.post("/predictions/tiny-det?conf=0.5&max_det=2&classes=0,2", content=data, headers=png).json()
            job = c.post("/async/predictions/tiny-det?conf=0.5&max_det=2&classes=0,2", content=data, headers=png)
            assert job.status_code == 202, job.text
            bad = c.post("/async/predictions/tiny-det?conf=2", content=data, headers=png)
            assert bad.status_code == 422 and "conf" in bad.text, bad.text
            in_json = c.post("/async/predictions/tiny-det?conf=0.5", json={"image": base64.b64encode(data).decode()})
            assert in_json.status_code == 400 and "as fields" in in_json.json()["error"], in_json.text
            unknown = c.post("/async/predictions/tiny-det?confidence=0.5", content=data, headers=png)
            assert unknown.status_code == 400 and "conf, iou" in unknown.json()["error"], unknown.text
            deadline = time.monotonic() + 60
            while (state := c.get(f"/async/jobs/{job.json()['job_id']}").json())["state"] in ("queued", "running"):
                assert time.monotonic() < deadline, state
                time.sleep(0.05)
        assert state["state"] == "succeeded", state
        result = json.loads(Path(state["output_location"].removeprefix("file://")).read_bytes())
        assert result["prediction"] == sync["prediction"]
        assert len(result["prediction"]["boxes"]) <= 2 and set(result["prediction"]["classes"]) <= {0, 2}
    finally:
        proc.stop()
