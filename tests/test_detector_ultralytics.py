"""Acceptance: detections served by shoal match Ultralytics' own predict() on the same image and weights.

Ultralytics runs in .venv-video (created by build/setup-video-env.sh on first use, a few
minutes) as a subprocess that writes JSON; shoal's side is the real trace stage (export
in that venv, checks, freeze) and a real `shoal serve` process, which never imports
Ultralytics, OpenCV or torchvision.
"""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from shoal.spec import ModelSpec, Source, load_spec
from shoal.store import open_store
from shoal.store.base import ModelStore
from shoal.trace.detector import export_env, video_python
from shoal.trace.stage import TraceOptions, trace_spec
from shoal.vision.image import decode_image
from shoal.vision.letterbox import letterbox
from tests.detector_support import encode, scene, unmatched
from tests.server_fixtures import REPO, ServerProcess

SIDE = Path(__file__).with_name("ultralytics_side.py")
MIN_IOU = 0.99


def ultralytics(python: Path, *args: str) -> None:
    with tempfile.TemporaryDirectory() as cfg:
        proc = subprocess.run([str(python), str(SIDE), *args], capture_output=True, text=True, env=export_env(Path(cfg)),
                              timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def vpython() -> Path:
    return video_python(log=lambda msg: print(msg))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ultra")
    scene(1280, 720, seed=8, shapes=18).save(root / "frame.png")  # a camera-sized frame: letterbox downscales
    scene(800, 600, seed=8, shapes=18).save(root / "frame.jpg", quality=90)
    scene(500, 375, seed=8, shapes=18).save(root / "small.png")  # upscaled by the letterbox
    return root


@pytest.fixture(scope="module")
def traced(vpython: Path, work: Path) -> tuple[ModelStore, Path]:
    """Test weights made by Ultralytics, then the real trace stage (a user's .pt) into a store."""
    images = [str(work / name) for name in ("frame.png", "frame.jpg", "small.png")]
    ultralytics(vpython, "weights", "--image", *images, "--bias", "-5", "--out", str(work / "user.pt"))
    store = open_store(f"file://{work / 'store'}")
    spec = ModelSpec(id="cam-det", kind="detector", task="detection", source=Source(path=str(work / "user.pt")),
                     image_size=640, batch_sizes=[1, 2])
    manifest, traced_now = trace_spec(spec, store, TraceOptions(isolated_profile=False, build_dir=work / "build"))
    assert traced_now and manifest.kind == "detector" and manifest.image_size == 640
    assert manifest.profile and set(manifest.profile.latency_ms_p50) == {1, 2}
    return store, work / "build" / "cam-det" / "cpu-fp32" / "weights.pt"


@pytest.fixture(scope="module")
def served(traced: tuple[ModelStore, Path]) -> Iterator[ServerProcess]:
    store, _ = traced
    proc = ServerProcess(["--store", store.uri, "--executors", "1", "--threads", "2"]).start(timeout_s=120)
    yield proc
    proc.stop()


# Thresholds per image: random weights score each scene differently; each case gives 10-130 boxes.
CASES = [("frame.png", 0.1), ("frame.png", 0.05), ("frame.jpg", 0.25), ("small.png", 0.5)]


@pytest.fixture(scope="module")
def references(vpython: Path, work: Path, traced: tuple[ModelStore, Path]) -> dict[str, Any]:
    """Ultralytics' predict() for every case, in one subprocess."""
    out = work / "reference.json"
    ultralytics(vpython, "predict", "--weights", str(traced[1]), "--out", str(out),
                "--case", *(f"{work / image}:{conf}" for image, conf in CASES))
    found = json.loads(out.read_text())
    return {f"{Path(k.rpartition(':')[0]).name}:{k.rpartition(':')[2]}": v for k, v in found.items()}


@pytest.mark.parametrize("image,conf", CASES)
def test_served_detections_match_ultralytics_predict(references: dict[str, Any], work: Path, served: ServerProcess,
                                                     image: str, conf: float) -> None:
    theirs = references[f"{image}:{conf}"]
    kind = "image/png" if image.endswith(".png") else "image/jpeg"
    with served.client() as c:
        resp = c.post(f"/predictions/cam-det?conf={conf}", content=(work / image).read_bytes(),
                      headers={"Content-Type": kind})
    assert resp.status_code == 200, resp.text
    ours = resp.json()["prediction"]
    assert len(theirs["boxes"]) >= 5, "the test weights should give several confident boxes"
    assert len(ours["boxes"]) == len(theirs["boxes"])
    assert not unmatched(ours, theirs, MIN_IOU)
    assert sorted(ours["names"]) == sorted(theirs["names"])
    assert np.allclose(sorted(ours["scores"]), sorted(theirs["scores"]), atol=2e-3)


def test_batched_requests_give_the_same_boxes(references: dict[str, Any], work: Path, served: ServerProcess) -> None:
    theirs = references["frame.png:0.1"]
    b64 = base64.b64encode((work / "frame.png").read_bytes()).decode()
    small = base64.b64encode(encode(scene(300, 500, seed=2))).decode()
    with served.client() as c:
        resp = c.post("/predictions/cam-det", json={"inputs": [{"image": small}, {"image": b64}], "conf": 0.1})
    assert resp.status_code == 200, resp.text
    assert not unmatched(resp.json()["predictions"][1], theirs, MIN_IOU)


@pytest.fixture(scope="module")
def letterboxed(vpython: Path, work: Path) -> Path:
    out = work / "letterboxed"
    out.mkdir()
    ultralytics(vpython, "letterbox", "--out-dir", str(out),
                "--image", *(str(work / name) for name in ("frame.png", "frame.jpg", "small.png")))
    return out


@pytest.mark.parametrize("image", ["frame.png", "frame.jpg", "small.png"])
def test_letterbox_equals_ultralytics_letterbox(letterboxed: Path, work: Path, image: str) -> None:
    theirs = np.load(letterboxed / f"{image}.npy").astype(np.int16)
    x, _ = letterbox(decode_image((work / image).read_bytes()), 640)
    ours = (x * 255).round().permute(1, 2, 0).numpy().astype(np.int16)
    diff = np.abs(ours - theirs)
    if image == "small.png":  # upscaling: OpenCV rounds its edge rows differently (see shoal.vision.resize)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.005
    else:
        assert diff.max() == 0


def test_catalog_yolov8n_exports_and_is_up_to_date_the_second_time(vpython: Path, work: Path) -> None:
    store = open_store(f"file://{work / 'catalog-store'}")
    spec = load_spec(REPO / "models" / "yolov8n.yaml")
    opts = TraceOptions(isolated_profile=False, build_dir=work / "catalog-build", batch_sizes=[1])
    manifest, traced_now = trace_spec(spec, store, opts)
    assert traced_now and manifest.id == "yolov8n" and manifest.kind == "detector" and manifest.task == "detection"
    assert manifest.image_size == 640 and manifest.labels and len(manifest.labels) == 80
    assert manifest.files["model.pt"].size > 5_000_000 and "ultralytics" in manifest.source
    again, traced_again = trace_spec(spec, store, opts)
    assert not traced_again and again.spec_sha256 == manifest.spec_sha256
