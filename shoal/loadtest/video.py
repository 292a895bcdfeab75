"""`shoal loadtest --video`: N cameras, each its own detector model, each sending JPEG frames at F fps.

A camera behaves like a frame grabber: frames are due on a fixed clock (staggered
start per camera), at most one frame is in flight, and a frame that comes due while
the previous one is still out is dropped. A frame whose answer arrives after the next
frame was due is late. Per-stage times come from the server's own ``timings``.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from shoal.errors import ShoalError, UsageError
from shoal.loadtest.targets import Routes, routes_from_plan, routes_from_target

STAGES = ("queue_ms", "preprocess_ms", "inference_ms", "postprocess_ms", "total_ms")


@dataclass
class VideoOptions:
    target: str | None = None
    plan: Path | None = None
    model_ids: list[str] | None = None
    cameras: int | None = None
    fps: float = 5.0
    duration_s: float = 30.0
    frame_size: tuple[int, int] = (1280, 720)
    timeout_s: float = 30.0
    max_error_rate: float = 0.01
    seed: int = 0
    json_path: Path | None = None
    host: str = "127.0.0.1"
    namespace: str = "shoal"
    base_url_template: str | None = None


@dataclass
class CameraStats:
    camera: int
    model: str
    due: int = 0
    sent: int = 0
    ok: int = 0
    dropped: int = 0
    late: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})


def choose_models(routes: Routes, wanted: int | None) -> list[str]:
    """Detector models the target lists (or the ids given), one per camera; cameras never share unless asked."""
    models = [m for m in routes.models if routes.tasks.get(m) in (None, "detection")]
    if not models:
        raise UsageError("no detector models on the target: build one (./build.sh --models yolov8n) or pass "
                         "--model-ids")
    n = len(models) if wanted is None else wanted
    if n < 1:
        raise UsageError("--cameras must be at least 1")
    return [models[i % len(models)] for i in range(n)]


async def _camera(stats: CameraStats, client: httpx.AsyncClient, url: str, frame: bytes, period: float,
                  start: float, end: float) -> None:
    inflight: asyncio.Task | None = None
    due = start
    while due < end:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        stats.due += 1
        if inflight is not None and not inflight.done():
            stats.dropped += 1
        else:
            inflight = asyncio.create_task(_send(stats, client, url, frame, period, due))
            stats.sent += 1
        due += period
    if inflight is not None:
        await inflight


async def _send(stats: CameraStats, client: httpx.AsyncClient, url: str, frame: bytes, period: float,
                due: float) -> None:
    t0 = time.perf_counter()
    try:
        resp = await client.post(url, content=frame, headers={"Content-Type": "image/jpeg"})
    except httpx.HTTPError as exc:
        kind = type(exc).__name__
        stats.errors[kind] = stats.errors.get(kind, 0) + 1
        return
    done = time.perf_counter()
    if resp.status_code != 200:
        stats.errors[str(resp.status_code)] = stats.errors.get(str(resp.status_code), 0) + 1
        return
    stats.ok += 1
    stats.latency_ms.append((done - t0) * 1000)
    if done > due + period:
        stats.late += 1
    timings = resp.json().get("timings", {})
    for s in STAGES:
        if isinstance(timings.get(s), (int, float)):
            stats.stages[s].append(float(timings[s]))


async def _run(cameras: list[CameraStats], urls: list[str], frames: list[bytes], o: VideoOptions) -> float:
    limits = httpx.Limits(max_connections=len(cameras) + 4, max_keepalive_connections=len(cameras) + 4)
    period = 1.0 / o.fps
    rng = random.Random(o.seed)
    async with httpx.AsyncClient(timeout=o.timeout_s, limits=limits) as client:
        start = time.perf_counter() + 0.2
        end = start + o.duration_s
        await asyncio.gather(*(_camera(c, client, u, f, period, start + rng.random() * period, end)
                               for c, u, f in zip(cameras, urls, frames)))
        return time.perf_counter() - start


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 2)


def summarise(cameras: list[CameraStats], wall_s: float, o: VideoOptions) -> dict[str, Any]:
    pooled = {s: [v for c in cameras for v in c.stages[s]] for s in STAGES}
    latency = [v for c in cameras for v in c.latency_ms]
    errors: dict[str, int] = {}
    for c in cameras:
        for k, v in c.errors.items():
            errors[k] = errors.get(k, 0) + v
    total = {k: sum(getattr(c, k) for c in cameras) for k in ("due", "sent", "ok", "dropped", "late")}
    return {
        "tool": "shoal loadtest --video", "cameras": len(cameras), "models": len({c.model for c in cameras}),
        "fps": o.fps, "duration_s": round(wall_s, 2), "frame": f"{o.frame_size[0]}x{o.frame_size[1]} JPEG",
        "frames": total, "errors": errors, "error_rate": round(sum(errors.values()) / max(1, total["sent"]), 4),
        "achieved_fps_per_camera": round(total["ok"] / max(1e-9, wall_s) / len(cameras), 3),
        "stages_ms": {s.removesuffix("_ms"): {"p50": _pct(v, 50), "p90": _pct(v, 90)} for s, v in pooled.items()},
        "client_latency_ms": {"p50": _pct(latency, 50), "p90": _pct(latency, 90), "p99": _pct(latency, 99),
                              "mean": round(statistics.fmean(latency), 2) if latency else None},
        "per_camera": [{"camera": c.camera, "model": c.model, "due": c.due, "ok": c.ok, "dropped": c.dropped,
                        "late": c.late, "errors": sum(c.errors.values())} for c in cameras],
    }


def print_report(doc: dict[str, Any], out: Console) -> None:
    out.print(f"{doc['cameras']} cameras ({doc['models']} models) at {doc['fps']:g} fps for {doc['duration_s']:g} s, "
              f"{doc['frame']} frames", highlight=False)
    table = Table()
    table.add_column("stage")
    table.add_column("P50 ms", justify="right")
    table.add_column("P90 ms", justify="right")
    for name, v in doc["stages_ms"].items():
        table.add_row(name if name != "total" else "total (server)", _fmt(v["p50"]), _fmt(v["p90"]))
    lat = doc["client_latency_ms"]
    table.add_row("total (client)", _fmt(lat["p50"]), _fmt(lat["p90"]))
    out.print(table)
    f = doc["frames"]
    out.print(f"frames: {f['due']} due, {f['sent']} sent, {f['ok']} ok, {f['dropped']} dropped (camera busy), "
              f"{f['late']} late (after the next frame was due), {sum(doc['errors'].values())} errors "
              f"{doc['errors'] or ''}; {doc['achieved_fps_per_camera']:g} fps per camera achieved", highlight=False)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def run_video(o: VideoOptions, console: Console, out: Console | None = None) -> dict[str, Any]:
    """Run the camera fleet against a target or a plan; raises ShoalError past --max-error-rate."""
    if bool(o.target) == bool(o.plan):
        raise UsageError("give exactly one of --target URL or --plan plan.json")
    if o.fps <= 0 or o.duration_s <= 0:
        raise UsageError("--fps and --duration must be positive for --video")
    if o.target:
        routes = routes_from_target(o.target, o.model_ids)
    else:
        assert o.plan
        routes = routes_from_plan(o.plan, o.model_ids, o.base_url_template, o.host, o.namespace)
    models = choose_models(routes, o.cameras)
    if len(set(models)) < len(models):
        console.print(f"[yellow]warning:[/yellow] {len(models)} cameras share {len(set(models))} models; "
                      "give each camera its own model (shoal models synth) to measure time-slicing")
    from shoal.vision.frames import frame_bytes

    cameras = [CameraStats(i, m) for i, m in enumerate(models)]
    urls = [f"{routes.endpoint_of(m).url}/predictions/{m}" for m in models]
    frames = [frame_bytes(*o.frame_size, seed=o.seed + i) for i in range(len(models))]
    console.print(f"video: {len(cameras)} cameras at {o.fps:g} fps for {o.duration_s:g} s", highlight=False)
    wall = asyncio.run(_run(cameras, urls, frames, o))
    doc = summarise(cameras, wall, o)
    print_report(doc, out or Console(width=None if os.isatty(1) else 120))
    if o.json_path:
        from shoal.loadtest.report import write_json

        write_json(o.json_path, doc)
    if doc["frames"]["sent"] == 0:
        raise ShoalError("the run sent no frame: check --duration and --fps")
    if doc["error_rate"] > o.max_error_rate:
        raise ShoalError(f"error rate {doc['error_rate']:.2%} exceeds --max-error-rate {o.max_error_rate:g}")
    return doc
