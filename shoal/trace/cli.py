"""`shoal trace MODEL.yaml ...`: compile a catalog entry and record its measured profile.

Also `shoal models synth`: copies of a traced base are the trace stage's work (the frozen
path re-reads the build cache), so this module adds that command to the store's `models` group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional, get_args

import typer
from rich.console import Console

from shoal import cache_dirs
from shoal.config import load_settings, parse_bytes
from shoal.store.cli import StoreOpt, models_app
from shoal.store.manifest import Precision

console = Console(stderr=True)


def trace(
    model_files: Annotated[list[Path], typer.Argument(help="catalog entries, e.g. models/minilm-cls.yaml")],
    processor: Annotated[str, typer.Option(help="cpu | gpu | inf1 | inf2")] = "cpu",
    precision: Annotated[Optional[str], typer.Option(
        help="auto | fp32 | bf16 | fp16 | int8 | int8-bf16 | fp32-int8emb | bf16-int8emb (default: the catalog's)")] = None,
    batch_size: Annotated[Optional[list[int]], typer.Option("--batch-size", help="batch sizes to profile")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="sequence length (overrides the catalog)")] = None,
    pipeline_cores: Annotated[int, typer.Option(help="inf1: NeuronCores to pipeline one model over")] = 1,
    store: Annotated[Optional[str], typer.Option(help="store URI (default: SHOAL_STORE or file://./store)")] = None,
    force: Annotated[bool, typer.Option(help="trace even if the store holds an up-to-date artifact")] = False,
) -> None:
    """Compile models (torch.jit, torch-neuron, torch-neuronx), check them against eager, profile them, store them."""
    from shoal.devices import PROCESSORS
    from shoal.errors import UsageError
    from shoal.spec import load_spec, trace_order
    from shoal.store import store_from_settings
    from shoal.trace.lora_example import ensure_examples
    from shoal.trace.stage import TraceOptions, trace_spec

    if processor not in PROCESSORS:
        raise UsageError(f"unknown processor {processor!r}: use {', '.join(PROCESSORS)}")
    if precision not in (None, "auto", *get_args(Precision)):
        raise UsageError(f"unknown precision {precision!r}: use auto, {', '.join(get_args(Precision))}")
    specs = trace_order([load_spec(p) for p in model_files])  # validate every file before tracing any
    settings = load_settings(store=store)
    model_store = store_from_settings(settings)
    opts = TraceOptions(processor=processor, precision=precision, batch_sizes=batch_size or None, seq_len=seq_len,
                        pipeline_cores=pipeline_cores, force=force, build_dir=cache_dirs.build_dir(settings.cache_dir),
                        log=lambda msg: console.print(f"  {msg}", highlight=False))
    ensure_examples(specs, opts.log)
    for spec in specs:
        with console.status(f"tracing {spec.id}"):
            manifest, traced = trace_spec(spec, model_store, opts)
        assert manifest.profile
        lat = ", ".join(f"b{b} {ms:.1f} ms" for b, ms in sorted(manifest.profile.latency_ms_p50.items()))
        if manifest.profile.unstable:
            lat += f" [yellow](unstable profile: `shoal models show {spec.id}` says why)[/yellow]"
        state = "traced" if traced else "up to date"
        console.print(f"[green]{spec.id}[/green] {state}: {manifest.precision}, "
                      f"{manifest.profile.param_bytes / 2**20:.0f} MiB params, "
                      f"{manifest.profile.resident_bytes / 2**20:.0f} MiB resident, {lat}", highlight=False)
    cache_dirs.prune(opts.build_dir, parse_bytes(settings.build_cache_budget))


def synth(
    base: Annotated[str, typer.Option("--from", help="traced model to copy, e.g. minilm-cls")],
    count: Annotated[int, typer.Option(help="how many unique models to create")],
    seed: Annotated[int, typer.Option(help="first seed; model i gets seed+i")] = 0,
    prefix: Annotated[Optional[str], typer.Option(help="id prefix (default: the base id)")] = None,
    distinct: Annotated[bool, typer.Option("--distinct", help="perturb every tensor (default: vectors and the "
                                           "head only, so copies share the base's matrices)")] = False,
    store: StoreOpt = None,
) -> None:
    """Create N unique models (perturbed weights, fresh head, own sha256) from a traced base."""
    import time

    from rich.progress import Progress

    from shoal.store import store_from_settings
    from shoal.trace.synth import synth_models

    settings = load_settings(store=store)
    start = time.perf_counter()
    with Progress(transient=True) as bar:
        task = bar.add_task(f"synthesising from {base}", total=count)
        ids = synth_models(store_from_settings(settings), base, count, seed=seed, prefix=prefix,
                           build_dir=cache_dirs.build_dir(settings.cache_dir), distinct=distinct,
                           progress=lambda i: bar.update(task, completed=i))
    elapsed = time.perf_counter() - start
    typer.echo(f"created {len(ids)} models ({ids[0]} .. {ids[-1]}) in {elapsed:.1f} s "
               f"({elapsed / len(ids) * 1000:.0f} ms each)")


def register(app: typer.Typer) -> None:
    app.command("trace")(trace)
    models_app.command("synth")(synth)
