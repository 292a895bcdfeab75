"""`shoal capacity`: the per-stage table for a camera model and how many cameras one device holds."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from shoal.errors import UsageError

console = Console(stderr=True)
out = Console(width=None if os.isatty(1) else 132)  # piped into a file or a doc: no wrapping at 80 columns


def capacity(
    model: Annotated[str, typer.Option(help="model id in the store (a detector, e.g. yolov8n)")],
    device: Annotated[str, typer.Option(help="cpu | cpu:A-B | cuda:N")] = "cpu",
    slo_ms: Annotated[float, typer.Option(help="latency objective per frame, worst case: all cameras at once")] = 500.0,
    fps: Annotated[Optional[float], typer.Option(help="frames per second each camera sends")] = None,
    instance_type: Annotated[Optional[str], typer.Option(help="price on this catalog type, e.g. g4dn.xlarge")] = None,
    executors: Annotated[Optional[int], typer.Option(help="executor threads (default: the server's layout)")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch threads per executor (default: the server's)")] = None,
    frames: Annotated[int, typer.Option(help="frames timed per executor")] = 30,
    frame_size: Annotated[str, typer.Option(help="camera frame WxH (a synthetic JPEG)")] = "1280x720",
    store: Annotated[Optional[str], typer.Option(help="store URI (default: SHOAL_STORE or file://./store)")] = None,
    catalog: Annotated[Optional[Path], typer.Option(help="instance catalog YAML (default: the built-in one)")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the figures to this JSON file")] = None,
) -> None:
    """Measure preprocess / inference / postprocess on DEVICE and size a fleet of camera models."""
    from shoal.capacity import measure
    from shoal.config import load_settings
    from shoal.devices import parse_device
    from shoal.pack.catalog import load_catalog, resolve
    from shoal.server.executor import check_device, executor_layout
    from shoal.store import store_from_settings
    from shoal.vision.frames import frame_bytes, parse_size

    if slo_ms <= 0 or (fps is not None and fps <= 0) or frames < 1:
        raise UsageError("--slo-ms, --fps and --frames must be positive")
    width, height = parse_size(frame_size)
    dev = parse_device(device)
    if dev.kind not in ("cpu", "cuda"):
        raise UsageError(f"capacity measures cpu or cuda devices, not {dev.kind}")
    check_device(dev)
    instance = resolve(load_catalog(catalog), instance_type) if instance_type else None
    if instance and instance.processor not in ("cpu", "gpu"):
        raise UsageError(f"{instance.name} is a {instance.processor} type; capacity prices cpu and gpu types")
    n_exec, n_threads = executor_layout(dev, executors, threads)
    model_store = store_from_settings(load_settings(store=store))
    if not model_store.exists(model):
        raise UsageError(f"model {model} is not in {model_store.uri}: run ./build.sh --models {model} first")
    label = f"{width}x{height} JPEG"
    with console.status(f"measuring {model} on {dev}"):
        m = measure(model_store, model, dev, n_exec, n_threads, frame_bytes(width, height), label, frames,
                    log=lambda s: console.print(f"  {s}", highlight=False))
    targets = [_here(m, dev, slo_ms, fps)]
    if instance is not None:
        targets.append(_instance(m, dev, instance, slo_ms, fps))
    _print(m, targets, slo_ms, fps)
    if json_out:
        from dataclasses import asdict

        from shoal.capacity import REFERENCE

        json_out.write_text(json.dumps({"measurement": m.to_json(), "targets": [asdict(t) for t in targets],
                                        "reference": REFERENCE, "slo_ms": slo_ms, "fps": fps}, indent=1))


def _here(m, dev, slo_ms: float, fps: float | None):  # type: ignore[no-untyped-def]
    from shoal.capacity import limits
    from shoal.devices import usable_cores

    s = m.stages
    if dev.kind == "cuda":
        device_ms, host_ms = s["inference"].p50_ms, s["preprocess"].p50_ms + s["postprocess"].p50_ms
    else:
        device_ms, host_ms = s["total"].p50_ms, 0.0
    return limits(f"this machine ({dev}, {usable_cores()} cores)", m, device_ms=device_ms, host_ms=host_ms,
                  executors=m.executors, model_bytes=m.model_bytes, base_bytes=m.base_bytes,
                  device_memory_bytes=m.device_memory_bytes, slo_ms=slo_ms, fps=fps)


def _instance(m, dev, inst, slo_ms: float, fps: float | None):  # type: ignore[no-untyped-def]
    """Figures for a catalog type: measured if it is this device's kind, else scaled by the catalog's speed."""
    from shoal.capacity import CUDA_CONTEXT_BYTES, limits

    s = m.stages
    pre_post = s["preprocess"].p50_ms + s["postprocess"].p50_ms
    notes = []
    if inst.processor == "gpu":
        if dev.kind == "cuda":
            device_ms, base = s["inference"].p50_ms, m.base_bytes
            notes.append(f"measured on {dev}; memory from the catalog ({inst.accelerator})")
        else:
            device_ms, base = s["inference"].p50_ms / inst.speed, CUDA_CONTEXT_BYTES
            notes.append(f"ESTIMATE: no GPU here; inference = this CPU's {s['inference'].p50_ms:.0f} ms / catalog "
                         f"speed {inst.speed:g}, pre/post as measured on this CPU, "
                         f"{CUDA_CONTEXT_BYTES >> 20} MiB CUDA context")
        return limits(f"{inst.name} ({inst.accelerator})", m, device_ms=device_ms, host_ms=pre_post, executors=1,
                      model_bytes=m.model_bytes, base_bytes=base, device_memory_bytes=inst.device_memory_bytes,
                      slo_ms=slo_ms, fps=fps, devices=inst.devices, price_per_hour=inst.price, notes=notes)
    executors = inst.vcpu_per_device
    device_ms = s["total"].p50_ms if inst.machine else s["total"].p50_ms * m.threads / inst.speed
    if not inst.machine:
        notes.append(f"ESTIMATE: {executors} single-threaded executors per device, frame time x {m.threads} "
                     f"thread(s) / catalog speed {inst.speed:g} per vCPU")
    return limits(f"{inst.name} ({inst.accelerator})", m, device_ms=device_ms, host_ms=0.0,
                  executors=executors, model_bytes=m.model_bytes, base_bytes=m.base_bytes,
                  device_memory_bytes=inst.device_memory_bytes, slo_ms=slo_ms, fps=fps, devices=inst.devices,
                  price_per_hour=inst.price, notes=notes)


def _print(m, targets, slo_ms: float, fps: float | None) -> None:  # type: ignore[no-untyped-def]
    from shoal.capacity import REFERENCE

    cpu = _cpu_model()
    out.print(f"{m.model_id} on {m.device} ({cpu}): {m.frames} frames of {m.frame}, {m.executors} executor(s) x "
              f"{m.threads} thread(s), load average {os.getloadavg()[0]:.1f}", highlight=False)
    stages = Table()
    stages.add_column("stage")
    stages.add_column("P50 ms", justify="right")
    stages.add_column("P90 ms", justify="right")
    for name in ("preprocess", "inference", "postprocess", "total"):
        stages.add_row(name, f"{m.stages[name].p50_ms:.1f}", f"{m.stages[name].p90_ms:.1f}")
    stages.add_row("reference total", f"{REFERENCE['total_ms']:.0f}", "", end_section=False)
    out.print(stages)
    out.print(f"throughput: {m.frames_per_s:.2f} frames/s on this device (all executors)")
    title = f"cameras per device (one model each; SLO {slo_ms:g} ms" + (f", {fps:g} fps" if fps else "") + ")"
    table = Table(title=title)
    table.add_column("")
    for t in targets:
        table.add_column(t.target, justify="right")
    table.add_column(f"reference ({REFERENCE['device']})", justify="right")
    mib = 2**20
    rows = [
        ("device ms per frame", [f"{t.device_ms:.1f}" for t in targets], ""),
        ("host ms per frame (pre+post)", [f"{t.host_ms:.1f}" if t.host_ms else "-" for t in targets], ""),
        ("memory per camera model", [f"{t.model_bytes / mib:.0f} MiB" for t in targets], ""),
        ("device memory", [f"{t.device_memory_bytes / 2**30:.0f} GiB" for t in targets], "16 GiB"),
        ("cameras by memory", [str(t.by_memory) for t in targets], ""),
        (f"cameras by SLO {slo_ms:g} ms", [str(t.by_slo) for t in targets], ""),
        (f"cameras at {fps:g} fps" if fps else "cameras by fps", [str(t.by_fps) if t.by_fps is not None else "-"
                                                                for t in targets], ""),
        ("cameras per device", [f"{t.cameras} ({t.limited_by})" for t in targets],
         str(REFERENCE["models_per_device"])),
        ("$ per camera-month", [f"${t.per_camera_month:.2f}" if t.per_camera_month else "-" for t in targets],
         f"${REFERENCE['per_camera_month']:.2f} (${REFERENCE['per_camera_month_one_gpu_each']:.0f} one GPU each)"),
    ]
    for name, values, ref in rows:
        table.add_row(name, *values, ref)
    out.print(table)
    for t in targets:
        for note in t.notes:
            out.print(f"{t.target}: {note}", highlight=False)


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def register(app: typer.Typer) -> None:
    app.command("capacity")(capacity)
