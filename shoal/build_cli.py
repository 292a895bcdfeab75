"""`shoal build`: trace the catalog into the store (and build container images where Docker exists)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from shoal import cache_dirs
from shoal.config import load_settings, parse_bytes
from shoal.errors import UsageError

console = Console(stderr=True)
# yolov8n: + .venv-video (~3 min once); minilm-cls-lora: a LoRA adapter over minilm-cls (traced after its base)
DEFAULT_MODELS = ("minilm-embed", "minilm-cls", "minilm-cls-lora", "bert-base-qa", "yolov8n")


def catalog_files(models_dir: Path, names: list[str] | None) -> list[Path]:
    """The catalog entries to build: the named ones, or the default set."""
    wanted = names or list(DEFAULT_MODELS)
    if wanted == ["all"]:
        return sorted(models_dir.glob("*.yaml"))
    files = []
    for name in wanted:
        path = models_dir / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(p.stem for p in sorted(models_dir.glob("*.yaml")))
            raise UsageError(f"no catalog entry {path} (known: {known})")
        files.append(path)
    return files


def build(
    models: Annotated[Optional[str], typer.Option(help="comma-separated catalog ids, or 'all' (default: "
                                                      + ",".join(DEFAULT_MODELS) + ")")] = None,
    processor: Annotated[str, typer.Option(help="cpu | gpu | inf1 | inf2")] = "cpu",
    store: Annotated[Optional[str], typer.Option(help="store URI (default: SHOAL_STORE or file://./store)")] = None,
    models_dir: Annotated[Path, typer.Option(help="catalog folder")] = Path("models"),
    images: Annotated[bool, typer.Option(help="also build container images (needs a Docker engine)")] = False,
    force: Annotated[bool, typer.Option(help="re-trace models that are up to date")] = False,
) -> None:
    """Trace every catalog model into the store; up-to-date models are skipped in seconds."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from shoal.spec import load_spec, trace_order
    from shoal.store import store_from_settings
    from shoal.trace.lora_example import ensure_examples
    from shoal.trace.stage import TraceOptions, trace_spec

    settings = load_settings(store=store)
    files = catalog_files(models_dir, [m.strip() for m in models.split(",")] if models else None)
    specs = trace_order([load_spec(f) for f in files])  # bases before the adapters over them
    model_store = store_from_settings(settings)
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("tracing", total=len(specs))
        opts = TraceOptions(processor=processor, force=force, build_dir=cache_dirs.build_dir(settings.cache_dir),
                            log=lambda msg: bar.console.print(f"  {msg}", highlight=False))
        ensure_examples(specs, opts.log)  # the catalog's example adapter folder, made offline when missing
        for spec in specs:
            bar.update(task, description=f"tracing {spec.id}")
            manifest, traced = trace_spec(spec, model_store, opts)
            lat = ", ".join(f"b{b} {ms:.1f} ms" for b, ms in sorted(manifest.profile.latency_ms_p50.items())) \
                if manifest.profile else "-"
            if manifest.profile and manifest.profile.unstable:
                lat += f" [yellow](unstable profile: `shoal models show {spec.id}` says why)[/yellow]"
            bar.console.print(f"[green]{spec.id}[/green] {'traced' if traced else 'up to date'}: "
                              f"{manifest.precision}, {lat}", highlight=False)
            bar.advance(task)
    cache_dirs.prune(opts.build_dir, parse_bytes(settings.build_cache_budget))
    console.print(f"built {len(specs)} models into {model_store.uri} in {time.perf_counter() - start:.1f} s")
    if images:
        _build_images(processor)
    else:
        console.print("container images: skipped (pass --images to build build/Dockerfile.<processor>)")


def _build_images(processor: str) -> None:
    try:
        from shoal.deploy.docker import build_images
    except ImportError:
        raise UsageError("building images needs shoal.deploy.docker, which this install lacks") from None
    build_images([processor])


def register(app: typer.Typer) -> None:
    app.command("build")(build)
