"""Flags of `shoal bench sweep`; the work is in ``sweep.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional, get_args

import typer
from rich.console import Console

from shoal import cache_dirs
from shoal.errors import UsageError
from shoal.store.manifest import Precision


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: give comma-separated integers, e.g. 1,4,8") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{flag} {text!r}: give positive integers, e.g. 1,4,8")
    return values


def sweep(
    model: Annotated[Optional[str], typer.Option(help="model id in the store (precision P: itself or ID-P)")] = None,
    spec: Annotated[Optional[Path], typer.Option(
        help="models/X.yaml: trace it once per --precision as X-<precision> into --store first")] = None,
    store: Annotated[Optional[str], typer.Option(help="store URI (default: SHOAL_STORE or file://./store)")] = None,
    batch_sizes: Annotated[str, typer.Option(help="server max batch sizes")] = "1,4,8,16,32",
    clients: Annotated[str, typer.Option(help="closed-loop client counts per served point")] = "1,4,16,40",
    precision: Annotated[Optional[str], typer.Option(help="e.g. fp32,bf16,int8 (default: the model's own)")] = None,
    duration: Annotated[str, typer.Option(help="measured time per served point")] = "5s",
    warmup: Annotated[str, typer.Option(help="unrecorded time before each served point")] = "1s",
    inprocess_seconds: Annotated[float, typer.Option(help="time per batch size in-process")] = 2.0,
    threads: Annotated[Optional[int], typer.Option(help="torch threads in-process (default: all)")] = None,
    target: Annotated[Optional[str], typer.Option(
        help="measure the served path on this running server instead of starting one per batch size")] = None,
    served: Annotated[bool, typer.Option(help="measure the served path")] = True,
    inprocess: Annotated[bool, typer.Option(help="measure the in-process limit")] = True,
    workers: Annotated[int, typer.Option(help="load generator processes")] = 1,
    out: Annotated[Optional[Path], typer.Option(help="output folder (default .shoal/bench/sweep-<model>)")] = None,
    price_per_hour: Annotated[Optional[float], typer.Option(help="$/h for the cost plot")] = None,
    instance_type: Annotated[str, typer.Option(
        help="catalog type priced for the cost plot; this machine's vCPUs' share of it")] = "c6i.xlarge",
) -> None:
    """Sweep batch size x clients x precision: in-process limit and served path; CSV, JSON and 3 PNG plots."""
    from shoal.config import load_settings
    from shoal.devices import usable_cores
    from shoal.loadtest import cost as costmod
    from shoal.loadtest.scenario import parse_duration
    from shoal.loadtest.sweep import SweepOptions, resolve_models, run_sweep, trace_precisions
    from shoal.store import store_from_settings

    console = Console(stderr=True)
    if bool(model) == bool(spec):
        raise UsageError("give exactly one of --model ID or --spec models/X.yaml")
    precisions = [p.strip() for p in precision.split(",")] if precision else None
    for p in precisions or []:
        if p not in get_args(Precision):
            raise UsageError(f"--precision {p!r}: use {', '.join(get_args(Precision))}")
    bs, cl = _ints(batch_sizes, "--batch-sizes"), _ints(clients, "--clients")
    if not served and not inprocess:
        raise UsageError("nothing to measure: drop --no-served or --no-inprocess")
    settings = load_settings(store=store)
    model_store = store_from_settings(settings)
    log = lambda msg: console.print(msg, highlight=False)  # noqa: E731
    if spec:
        models = trace_precisions(spec, precisions or ["fp32"], model_store, cache_dirs.build_dir(settings.cache_dir), log)
    else:
        assert model
        models = resolve_models(model_store, model, precisions)
    name = model or (spec.stem if spec else "model")
    price = costmod.resolve_price(price_per_hour, instance_type, vcpus_used=usable_cores())
    opts = SweepOptions(models=models, store_uri=model_store.uri, batch_sizes=bs, clients=cl,
                        out=out or settings.state_dir / "bench" / f"sweep-{name}",
                        duration_s=parse_duration(duration, "--duration"),
                        warmup_s=parse_duration(warmup, "--warmup"), inprocess_seconds=inprocess_seconds,
                        threads=threads, target=target, served=served, inprocess=inprocess, price=price,
                        workers=workers, log=log)
    doc = run_sweep(opts, model_store)
    for key, s in doc["summary"].items():
        console.print(f"{key}: knee at batch {s['knee_batch_size']}, best "
                      f"{max(s['throughput_by_batch'].values(), default=0):,.1f} inferences/s", highlight=False)
    console.print(f"wrote {opts.out}/sweep.csv, sweep.json, latency-throughput.png, throughput-batch.png, "
                  "cost-batch.png", highlight=False)
