"""Trace a YOLO detector: Ultralytics export (in .venv-video) -> checks + profile here -> model store.

Ultralytics and torchvision cannot live in shoal's venv (PyPI torchvision does not
import beside its torch), so the export runs as a subprocess in ``.venv-video``
(created on first use by ``build/setup-video-env.sh``). The TorchScript file it writes
loads in this process's torch; we check it (output layout, batch independence),
freeze it, measure it in a fresh process, and store it with a ``detector`` manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from shoal import cache_dirs
from shoal.errors import MissingDependencyError, ShoalError, UsageError
from shoal.spec import ModelSpec
from shoal.store.base import ModelStore
from shoal.store.manifest import Manifest, Profile, describe_files
from shoal.trace.options import TraceOptions, trace_key

REPO = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO / "build" / "setup-video-env.sh"
EXPORT_SCRIPT = Path(__file__).with_name("yolo_export.py")
EXPORT_TIMEOUT_S = 900
SETUP_TIMEOUT_S = 3600
BATCH_TOLERANCE = 1e-3  # |batched - alone| on the raw output, relative to its scale


def video_python(log: Any = print) -> Path:
    """The python of the Ultralytics venv: SHOAL_VIDEO_PYTHON, else .venv-video (created if missing)."""
    given = os.environ.get("SHOAL_VIDEO_PYTHON")
    if given:
        if not Path(given).is_file():
            raise UsageError(f"SHOAL_VIDEO_PYTHON={given} does not exist")
        return Path(given)
    venv = Path(os.environ.get("SHOAL_VIDEO_VENV", REPO / ".venv-video"))
    if (venv / ".shoal-video-installed").is_file() and (venv / "bin" / "python").is_file():
        return venv / "bin" / "python"
    if not SETUP_SCRIPT.is_file():
        raise MissingDependencyError("exporting detectors needs Ultralytics in a separate venv: set SHOAL_VIDEO_PYTHON "
                                     "to a python with ultralytics and torchvision installed")
    log("installing the video environment (.venv-video: ultralytics + torch 2.14.1, ~6 GB, 3-4 minutes)")
    proc = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=SETUP_TIMEOUT_S,
                          env={**os.environ, "SHOAL_VIDEO_VENV": str(venv)})
    if proc.returncode != 0:
        raise MissingDependencyError(f"build/setup-video-env.sh failed: {_last_line(proc.stderr)}")
    return Path(proc.stdout.strip().splitlines()[-1])


def export_env(config_dir: Path) -> dict[str, str]:
    """Ultralytics offline, with its settings file in a throw-away folder (never the user's home)."""
    return {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(config_dir), "YOLO_VERBOSE": "False"}


def detector_key(spec: ModelSpec, opts: TraceOptions) -> str:
    pins = EXPORT_SCRIPT.read_bytes() + (SETUP_SCRIPT.read_bytes() if SETUP_SCRIPT.is_file() else b"")
    return hashlib.sha256((trace_key(spec, opts) + hashlib.sha256(pins).hexdigest()).encode()).hexdigest()


def trace_detector(spec: ModelSpec, store: ModelStore, opts: TraceOptions) -> tuple[Manifest, bool]:
    """Export, check, profile and store one detector; up-to-date models are skipped."""
    if opts.processor not in ("cpu", "gpu"):
        raise UsageError(f"{spec.id}: detector models trace for cpu or gpu (TorchScript), not {opts.processor}")
    precision = opts.precision or spec.precision
    if precision not in ("auto", "fp32"):
        raise UsageError(f"{spec.id}: detector models are exported in fp32 only (asked for {precision})")
    key = detector_key(spec, opts)
    if not opts.force and store.exists(spec.id) and store.read_manifest(spec.id).spec_sha256 == key:
        return store.read_manifest(spec.id), False
    size = spec.image_size or 640
    batch_sizes = sorted(set(opts.batch_sizes or spec.batch_sizes))
    folder = (opts.build_dir / spec.id / f"{opts.processor}-fp32").resolve()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    info = export(spec, folder, size, opts.log)
    threads = opts.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    device = "cuda" if opts.processor == "gpu" else "cpu"
    names = spec.labels or info["names"]
    opts.log(f"{spec.id}: checking the TorchScript export ({len(names)} classes, {size}x{size})")
    check_and_freeze(folder / "model.torchscript", folder / "model.pt", len(names), size, device)
    opts.log(f"{spec.id}: measuring batch sizes {batch_sizes}")
    profile = measure(folder / "model.pt", size, batch_sizes, threads, device, opts.isolated_profile)
    if profile.get("unstable"):
        opts.log(f"{spec.id}: warning: latency is not stable, recorded as such: {profile['unstable']}")
    manifest = Manifest(
        id=spec.id, kind="detector", task="detection", format="torchscript",
        processor=opts.processor,  # type: ignore[arg-type]
        precision="fp32", image_size=size, labels=names, artifact="model.pt", tokenizer=None,
        files=describe_files(folder, ["model.pt"]), batching=spec.batching, source=_describe(spec, info),
        spec_sha256=key,
        profile=Profile(param_bytes=int(info["params"]) * 4, artifact_bytes=(folder / "model.pt").stat().st_size,
                        resident_bytes=int(profile["resident_bytes"]),
                        latency_ms_p50={int(b): float(ms) for b, ms in profile["latency_ms_p50"].items()},
                        threads=threads,
                        measured_on=f"{opts.processor} {platform.processor() or platform.machine()} x{os.cpu_count()}",
                        precisions_tried={"fp32": "exported by Ultralytics " + info["ultralytics"]},
                        unstable=profile.get("unstable")),
    )
    store.push(folder, manifest)
    # model.pt is in the store now; keep the unfrozen trace (`shoal models synth` re-freezes copies from it)
    # and Ultralytics' checkpoint of the exported weights (to compare with Ultralytics' own predictions)
    cache_dirs.keep_only(folder, {"traced.pt", "weights.pt"})
    return manifest, True


def export(spec: ModelSpec, out: Path, size: int, log: Any) -> dict[str, Any]:
    """Run yolo_export.py in the video venv; returns its export.json."""
    src = spec.source
    if src.package:
        raise UsageError(f"{spec.id}: detector sources are 'config' (an Ultralytics model yaml) or 'path' (a .pt)")
    if src.path:
        weights = Path(src.path).expanduser()
        if not weights.is_file():
            raise UsageError(f"{spec.id}: weights file {weights} does not exist")
        args = ["--weights", str(weights.resolve())]
    else:
        assert src.config
        local = Path(src.config).expanduser()
        args = ["--config", str(local.resolve()) if local.is_file() else src.config, "--seed", str(src.seed)]
    python = video_python(log)
    log(f"{spec.id}: exporting {src.describe()} with Ultralytics (TorchScript, {size}x{size})")
    with tempfile.TemporaryDirectory(prefix="shoal-yolo-") as cfg:
        cmd = [str(python), str(EXPORT_SCRIPT), *args, "--imgsz", str(size), "--out", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=export_env(Path(cfg)), cwd=out,
                                  timeout=EXPORT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ShoalError(f"{spec.id}: the Ultralytics export took over {EXPORT_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise ShoalError(f"{spec.id}: Ultralytics export failed: {_last_line(proc.stderr)}")
    info: dict[str, Any] = json.loads((out / "export.json").read_text())
    return info


def check_and_freeze(src: Path, dst: Path, classes: int, size: int, device: str) -> None:
    """Refuse an export whose output is not [B, 4 + classes, anchors] or depends on its batch-mates; freeze it."""
    module = torch.jit.load(str(src), map_location=device).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, size, size, generator=gen).to(device)
    with torch.inference_mode():
        both = _first(module(x)).float()
        alone = _first(module(x[1:])).float()
        if both.dim() != 3 or both.shape[0] != 2 or both.shape[1] != 4 + classes:
            raise ShoalError(f"export output has shape {tuple(both.shape)}; expected [B, {4 + classes}, anchors] "
                             "(a YOLOv8-style detect head)")
        if not torch.isfinite(both).all():
            raise ShoalError("export output has NaN or inf values")
        scale = both.abs().max().clamp(min=1.0)
        diff = float((both[1] - alone[0]).abs().max() / scale)
        if diff > BATCH_TOLERANCE:
            raise ShoalError(f"export output for an image changes with its batch-mates (relative {diff:.2g})")
        frozen = torch.jit.freeze(module)
        drift = float((_first(frozen(x)).float() - both).abs().max() / scale)
    if drift > 1e-4:
        raise ShoalError(f"freezing the export changed its output (relative {drift:.2g})")
    torch.jit.save(frozen, str(dst))
    shutil.copyfile(src, dst.with_name("traced.pt"))  # unfrozen, kept in the build cache for `shoal models synth`


def measure(artifact: Path, size: int, batch_sizes: list[int], threads: int, device: str,
            isolated: bool) -> dict[str, Any]:
    """P50 forward latency per batch size and resident bytes, in a fresh process unless ``isolated`` is False."""
    if not isolated:
        from shoal.trace.detector_measure import measure as run
        from shoal.trace.timing import QUICK

        return run(artifact, size, batch_sizes, threads, device, budget=QUICK)
    cmd = [sys.executable, "-m", "shoal.trace.detector_measure", str(artifact), "--image-size", str(size),
           "--batch-sizes", ",".join(map(str, batch_sizes)), "--threads", str(threads), "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode != 0:
        raise ShoalError(f"measuring {artifact.name} failed: {_last_line(proc.stderr)}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _describe(spec: ModelSpec, info: dict[str, Any]) -> str:
    return f"{spec.source.describe()} (ultralytics {info['ultralytics']})"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"
