"""`shoal loadtest --video` against a real server: camera clocks, dropped and late frames, stage percentiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from shoal.loadtest.targets import Routes
from shoal.loadtest.video import choose_models
from shoal.store import open_store
from shoal.store.base import ModelStore
from tests.detector_support import make_tiny_detector
from tests.server_fixtures import ServerProcess, run_cli


@pytest.fixture(scope="module")
def cams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("video")
    store: ModelStore = open_store(f"file://{root / 'store'}")
    for i in range(3):
        make_tiny_detector(store, f"cam-{i}", root / "build" / str(i), seed=i)
    proc = ServerProcess(["--store", store.uri, "--executors", "1", "--threads", "1"]).start()
    yield proc
    proc.stop()


def test_each_camera_gets_its_own_detector_model() -> None:
    routes = Routes({}, {"a": "s", "b": "s", "txt": "s"}, {"a": "detection", "b": None, "txt": "classification"})
    assert choose_models(routes, None) == ["a", "b"]
    assert choose_models(routes, 3) == ["a", "b", "a"]


def test_video_loadtest_reports_stages_and_frame_accounting(cams: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "video.json"
    proc = run_cli("loadtest", "--video", "--target", cams.url, "--fps", "4", "--duration", "2s",
                   "--frame-size", "640x360", "--json", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "preprocess" in proc.stdout and "dropped" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["cameras"] == 3 and doc["models"] == 3
    f = doc["frames"]
    assert f["due"] == f["sent"] + f["dropped"] and 21 <= f["due"] <= 27  # 3 cameras x 4 fps x 2 s
    assert f["ok"] == f["sent"] and doc["errors"] == {}
    for stage in ("preprocess", "inference", "postprocess", "total"):
        assert doc["stages_ms"][stage]["p50"] > 0 and doc["stages_ms"][stage]["p90"] >= doc["stages_ms"][stage]["p50"]
    assert {c["model"] for c in doc["per_camera"]} == {"cam-0", "cam-1", "cam-2"}


def test_video_loadtest_bad_input(cams: ServerProcess) -> None:
    from rich.console import Console

    from shoal.errors import UsageError
    from shoal.loadtest.video import VideoOptions, run_video
    from shoal.vision.frames import parse_size

    quiet = Console(file=open("/dev/null", "w"))
    for opts, message in ((VideoOptions(target=cams.url, fps=0), "positive"),
                          (VideoOptions(target=cams.url, model_ids=["cam-0"], cameras=0), "at least 1"),
                          (VideoOptions(), "exactly one of")):
        with pytest.raises(UsageError, match=message):
            run_video(opts, quiet, quiet)
    with pytest.raises(UsageError, match="--frame-size"):
        parse_size("big")
    proc = run_cli("loadtest", "--video", "--target", cams.url, "--fps", "0")
    assert proc.returncode != 0 and "positive" in proc.stderr and "Traceback" not in proc.stderr
