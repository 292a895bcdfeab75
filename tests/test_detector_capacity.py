"""`shoal capacity`: the limit arithmetic, and the command on a tiny detector (real handler, real timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoal.capacity import cameras_per_device
from shoal.store import open_store
from shoal.store.base import ModelStore
from shoal.trace.tiny import make_tiny_model
from tests.detector_support import make_tiny_detector
from tests.server_fixtures import run_cli

MIB = 1 << 20


def test_cpu_limits_memory_slo_and_fps() -> None:
    # 2 executors, 100 ms per frame, 20 MiB per model after a 100 MiB base, 1 GiB of memory.
    by_mem, by_slo, by_fps = cameras_per_device(device_ms=100, host_ms=0, executors=2, model_bytes=20 * MIB,
                                                base_bytes=100 * MIB, device_memory_bytes=1024 * MIB,
                                                slo_ms=500, fps=2)
    assert by_mem == int((1024 * 0.9 - 100) // 20)  # 41
    assert by_slo == 10  # 5 frames per executor fit in 500 ms
    assert by_fps == 9  # 2 executors x 10 frames/s x 0.9 / 2 fps


def test_gpu_limits_count_host_time_once_and_refuse_impossible_slo() -> None:
    by_mem, by_slo, by_fps = cameras_per_device(device_ms=4, host_ms=20, executors=1, model_bytes=300 * MIB,
                                                base_bytes=0, device_memory_bytes=16 * 1024 * MIB, slo_ms=205,
                                                fps=None)
    assert by_mem == 49 and by_slo == 46 and by_fps is None
    assert cameras_per_device(device_ms=4, host_ms=300, executors=1, model_bytes=MIB, base_bytes=0,
                              device_memory_bytes=MIB * 100, slo_ms=205, fps=None)[1] == 0


@pytest.fixture(scope="module")
def cap_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    root = tmp_path_factory.mktemp("cap")
    store = open_store(f"file://{root / 'store'}")
    make_tiny_detector(store, "cam", root / "build")
    make_tiny_model(store, "words", build_dir=root / "build")
    return store


def test_capacity_prints_the_stage_table_and_prices_a_catalog_type(cap_store: ModelStore, tmp_path: Path) -> None:
    out = tmp_path / "cap.json"
    proc = run_cli("capacity", "--model", "cam", "--store", cap_store.uri, "--frames", "3", "--fps", "5",
                   "--frame-size", "640x360", "--instance-type", "g4dn.xlarge", "--json", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    for text in ("preprocess", "inference", "postprocess", "total", "cameras per device", "$ per camera-month",
                 "g4dn.xlarge", "$27.81", "ESTIMATE"):
        assert text in proc.stdout
    data = json.loads(out.read_text())
    stages = data["measurement"]["stages"]
    assert all(stages[s]["p50_ms"] > 0 for s in ("preprocess", "inference", "total"))
    here, g4dn = data["targets"]
    assert here["cameras"] == min(here["by_memory"], here["by_slo"], here["by_fps"])
    assert g4dn["price_per_hour"] == pytest.approx(0.526) and g4dn["per_camera_month"] > 0
    assert data["reference"]["models_per_device"] == 54


@pytest.mark.parametrize("args,message", [
    ({"model": "nope"}, "not in"),
    ({"model": "words"}, "text model"),
    ({"model": "cam", "instance_type": "inf1.xlarge"}, "inf1"),
    ({"model": "cam", "instance_type": "x9.huge"}, "unknown instance type"),
    ({"model": "cam", "frame_size": "wide"}, "--frame-size"),
    ({"model": "cam", "slo_ms": 0}, "positive"),
    ({"model": "cam", "device": "neuron:0"}, "cpu or cuda"),
])
def test_capacity_bad_input_is_a_usage_error(cap_store: ModelStore, args: dict, message: str) -> None:
    from shoal.capacity_cli import capacity
    from shoal.errors import UsageError

    kwargs = {"device": "cpu", "slo_ms": 500.0, "fps": None, "instance_type": None, "executors": None,
              "threads": None, "frames": 1, "frame_size": "64x64", "store": cap_store.uri, "catalog": None,
              "json_out": None, **args}
    with pytest.raises(UsageError, match=message):
        capacity(**kwargs)


def test_capacity_error_is_one_line_on_the_command_line(cap_store: ModelStore) -> None:
    proc = run_cli("capacity", "--model", "words", "--store", cap_store.uri)
    assert proc.returncode != 0 and "text model" in proc.stderr and "Traceback" not in proc.stderr
