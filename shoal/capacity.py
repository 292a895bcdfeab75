"""How many camera models one device holds: per-stage times measured here, then memory, SLO and fps limits.

Every camera has its own model (its own weights), so frames of different cameras never
share a batch: the device time-slices between models, one frame at a time per executor.
Measurement loads several copies of the model the way the server does (one handler per
camera, ``executors`` threads each running one frame at a time) and times each stage.

The limits, for N cameras on one device:
- memory: the first model costs ``base`` (runtime, allocator, CUDA context) + ``model``;
  every further camera costs ``model`` (its weights and graph). N <= (memory * 0.9 - base) / model.
- SLO, worst case: all N cameras send a frame at the same instant. On a CPU every stage runs
  on the executor threads: the last frame ends after ceil(N / executors) * total. On a GPU
  the device runs inferences one after another and the host does pre/post beside it:
  N * inference + preprocess + postprocess.
- fps: the device must keep up: N * fps * (device ms per frame) <= 1000 * executors * 0.9.
"""

from __future__ import annotations

import gc
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from shoal.devices import Device
from shoal.store.base import ModelStore
from shoal.store.manifest import Manifest
from shoal.trace.measure import rss_bytes

MEMORY_HEADROOM = 0.9  # keep 10% of device memory free for activations and fragmentation
UTILIZATION_CAP = 0.9  # plan the device to 90% busy at the target fps
HOURS_PER_MONTH = 730
CUDA_CONTEXT_BYTES = 512 << 20  # per-process CUDA context + cuDNN workspace, when estimating a GPU from a CPU
REFERENCE = {"models_per_device": 54, "device": "T4 (g4dn)", "total_ms": 205.0, "per_camera_month": 27.81,
             "per_camera_month_one_gpu_each": 353.0, "framework": "Ultralytics 8.2, YOLOv8n, time-sliced T4"}


@dataclass
class StageStats:
    p50_ms: float
    p90_ms: float


@dataclass
class Measurement:
    """What one device did with this model: stage times per frame, memory per extra camera model."""

    model_id: str
    device: str
    executors: int
    threads: int
    frame: str  # e.g. "1280x720 JPEG"
    frames: int
    stages: dict[str, StageStats]  # preprocess, inference, postprocess, total
    frames_per_s: float  # all executors together
    base_bytes: int
    model_bytes: int
    device_memory_bytes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Limits:
    """Cameras per device by each limit, and the price per camera-month if an instance was named."""

    target: str  # what the figures describe, e.g. "this machine (cpu)" or "g4dn.xlarge (t4, estimated)"
    device_ms: float  # device time per frame (cpu: total; gpu: inference)
    host_ms: float  # time outside the device per frame (gpu: pre + post; cpu: 0)
    executors: int
    model_bytes: int
    base_bytes: int
    device_memory_bytes: int
    by_memory: int
    by_slo: int
    by_fps: int | None
    cameras: int
    limited_by: str
    devices_per_instance: int = 1
    price_per_hour: float | None = None
    per_camera_month: float | None = None
    notes: list[str] = field(default_factory=list)


def cameras_per_device(*, device_ms: float, host_ms: float, executors: int, model_bytes: int, base_bytes: int,
                       device_memory_bytes: int, slo_ms: float, fps: float | None) -> tuple[int, int, int | None]:
    """(by memory, by SLO, by fps) for one device; see the module docstring for the model."""
    usable = device_memory_bytes * MEMORY_HEADROOM - base_bytes
    by_memory = max(0, int(usable // max(1, model_bytes)))
    by_slo = max(0, int((slo_ms - host_ms) // device_ms)) * executors if slo_ms > host_ms else 0
    by_fps = None
    if fps:
        by_fps = max(0, int(1000.0 * executors * UTILIZATION_CAP // (fps * device_ms)))
    return by_memory, by_slo, by_fps


def limits(target: str, m: Measurement, *, device_ms: float, host_ms: float, executors: int, model_bytes: int,
           base_bytes: int, device_memory_bytes: int, slo_ms: float, fps: float | None, devices: int = 1,
           price_per_hour: float | None = None, notes: list[str] | None = None) -> Limits:
    by_memory, by_slo, by_fps = cameras_per_device(device_ms=device_ms, host_ms=host_ms, executors=executors,
                                                   model_bytes=model_bytes, base_bytes=base_bytes,
                                                   device_memory_bytes=device_memory_bytes, slo_ms=slo_ms, fps=fps)
    options = {"memory": by_memory, f"SLO {slo_ms:g} ms": by_slo}
    if by_fps is not None:
        options[f"{fps:g} fps"] = by_fps
    limited_by = min(options, key=options.__getitem__)
    cameras = options[limited_by]
    per_month = None
    if price_per_hour and cameras:
        per_month = price_per_hour * HOURS_PER_MONTH / (cameras * devices)
    return Limits(target, device_ms, host_ms, executors, model_bytes, base_bytes, device_memory_bytes, by_memory,
                  by_slo, by_fps, cameras, limited_by, devices, price_per_hour, per_month, notes or [])


# -- measurement --
def measure(store: ModelStore, model_id: str, device: Device, executors: int, threads: int, frame: bytes,
            frame_label: str, frames: int = 30, copies: int = 3, log: Callable[[str], None] = lambda s: None,
            ) -> Measurement:
    """Load ``max(copies, executors)`` camera models, run ``frames`` frames per executor, time every stage."""
    import torch

    from shoal.server.handlers import create_handler
    from shoal.server.handlers.base import LoadContext
    from shoal.server.codecs.detector import ImageInput

    manifest: Manifest = store.read_manifest(model_id)
    if manifest.kind != "detector":
        from shoal.errors import UsageError

        raise UsageError(f"model {model_id} is a {manifest.kind} model; capacity plans camera (detector) models")
    folder = store.fetch(model_id)
    torch_device = f"cuda:{device.first or 0}" if device.kind == "cuda" else "cpu"
    ctx = LoadContext(torch_device=torch_device, device_kind=device.kind)
    torch.set_num_threads(threads)
    gc.collect()
    before = _memory(device)
    handlers, after = [], []
    for i in range(max(copies, executors, 2)):
        handler = create_handler(manifest, Path(folder), ctx)
        handler.warmup()
        handlers.append(handler)
        gc.collect()
        after.append(_memory(device))
        log(f"loaded camera model {i + 1}: {(after[-1] - before) / 2**20:.0f} MiB so far")
    model_bytes = max(1, int((after[-1] - after[0]) / (len(after) - 1)))
    base_bytes = max(0, after[0] - before - model_bytes)
    opts = handlers[0].defaults
    samples: list[tuple[float, float, float]] = []
    lock = threading.Lock()

    def camera(handler: Any) -> None:
        torch.set_num_threads(threads)
        for _ in range(frames):
            _, t = handler.run([ImageInput(frame, opts)], 1)
            with lock:
                samples.append((t.preprocess_s * 1000, t.inference_s * 1000, t.postprocess_s * 1000))

    for handler in handlers[:executors]:  # one more warm frame each, on the thread layout we measure
        handler.run([ImageInput(frame, opts)], 1)
    log(f"timing {frames} frames on each of {executors} executor(s)")
    workers = [threading.Thread(target=camera, args=(h,)) for h in handlers[:executors]]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    stages = {}
    for i, name in enumerate(("preprocess", "inference", "postprocess")):
        stages[name] = _stats([s[i] for s in samples])
    stages["total"] = _stats([sum(s) for s in samples])
    return Measurement(model_id, str(device), executors, threads, frame_label, len(samples), stages,
                       len(samples) / wall, base_bytes, model_bytes, _device_memory(device))


def _stats(values: list[float]) -> StageStats:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return StageStats(round(statistics.median(ordered), 3), round(p90, 3))


def _memory(device: Device) -> int:
    if device.kind == "cuda":
        import torch

        return int(torch.cuda.memory_allocated(device.first or 0))
    return rss_bytes()


def _device_memory(device: Device) -> int:
    if device.kind == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(device.first or 0).total_memory)
    from shoal.pack.catalog import machine_ram_bytes

    return machine_ram_bytes()
