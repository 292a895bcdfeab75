"""`shoal loadtest` and `shoal bench sweep`: the test stage's commands.

Only flag parsing lives here; ``command.py`` and ``sweep.py`` do the work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from shoal.errors import ShoalError

bench_app = typer.Typer(help="Benchmark sweeps: batch size x clients x precision.", no_args_is_help=True)


def _csv(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def loadtest(
    target: Annotated[Optional[str], typer.Option(help="server base URL, e.g. http://127.0.0.1:8080")] = None,
    plan: Annotated[Optional[Path], typer.Option(help="plan.json: route each model to its server")] = None,
    base_url_template: Annotated[Optional[str], typer.Option(
        help="URL of a plan's server; placeholders {name} {port} {host} {namespace}. Local default "
             "http://{host}:{port}; Kubernetes: http://{name}.{namespace}.svc.cluster.local:8080")] = None,
    host: Annotated[str, typer.Option(help="{host} in the URL template")] = "127.0.0.1",
    namespace: Annotated[str, typer.Option(help="{namespace} in the URL template")] = "shoal",
    model_ids: Annotated[Optional[str], typer.Option(help="only these model ids (comma-separated)")] = None,
    scenario: Annotated[Optional[Path], typer.Option(help="loadtest/*.yaml; flags override its values")] = None,
    clients: Annotated[Optional[int], typer.Option(help="closed loop: concurrent clients (default 40)")] = None,
    rate: Annotated[Optional[float], typer.Option(help="open loop: Poisson arrivals per second")] = None,
    duration: Annotated[Optional[str], typer.Option(help="measured time, e.g. 60s, 2m (default 60s)")] = None,
    requests: Annotated[Optional[int], typer.Option(help="measured requests instead of a duration")] = None,
    warmup: Annotated[Optional[str], typer.Option(help="unrecorded time before measuring, e.g. 5s")] = None,
    models: Annotated[Optional[str], typer.Option(help="random | sequential | zipf:S (default random)")] = None,
    payload: Annotated[Optional[str], typer.Option(
        help="builtin | FILE (text lines or JSON bodies); detectors get JPEG frames unless FILE holds JSON "
             "bodies")] = None,
    dns_cache: Annotated[bool, typer.Option(help="resolve each server host once")] = False,
    single: Annotated[Optional[str], typer.Option(
        help="sequential | random: one request at a time, --requests per model (default 10)")] = None,
    workers: Annotated[Optional[int], typer.Option(help="generator processes (pooled histograms)")] = None,
    timeout: Annotated[Optional[str], typer.Option(help="per-request timeout (default 30s)")] = None,
    max_error_rate: Annotated[Optional[float], typer.Option(
        help="exit non-zero when errors / requests exceeds this (default 0.01)")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write the machine-readable report")] = None,
    self_test: Annotated[bool, typer.Option(
        "--self-test", help="only measure the generator's ceiling against its own no-op server")] = False,
    ceiling: Annotated[str, typer.Option(help="auto (self-test first) | off | known req/s")] = "auto",
    ceiling_seconds: Annotated[float, typer.Option(help="length of the ceiling measurement")] = 2.0,
    price_per_hour: Annotated[Optional[float], typer.Option(help="$/h for cost (overrides the catalog)")] = None,
    instance_type: Annotated[Optional[str], typer.Option(help="catalog instance type for cost")] = None,
    fps: Annotated[Optional[float], typer.Option(help="video: camera frame rate for $ per camera-month")] = None,
    capacity: Annotated[Optional[float], typer.Option(help="req/s that % rates in a scenario refer to")] = None,
    seed: Annotated[int, typer.Option(help="seed of model choice, payload order and arrivals")] = 0,
    progress: Annotated[bool, typer.Option(help="live status line on a terminal")] = True,
    protocol: Annotated[str, typer.Option(help="native (POST /predictions) | v2 (KServe v2 over HTTP) | grpc "
                                               "(KServe v2 gRPC; --target grpc://HOST:PORT): the same payloads "
                                               "over each")] = "native",
    video: Annotated[bool, typer.Option("--video", help="cameras sending JPEG frames at --fps to detector models "
                                                        "(see shoal/loadtest/video.py)")] = False,
    cameras: Annotated[Optional[int], typer.Option(help="video: cameras (default: one per detector model)")] = None,
    frame_size: Annotated[str, typer.Option(help="video: frame WxH")] = "1280x720",
) -> None:
    """Load-test a server or a whole plan: pooled P50/P90/P95/P99, req/s, errors by kind, $ per million."""
    from shoal.loadtest.command import LoadtestOptions, machine_info, run_loadtest

    console = Console(stderr=True)
    if self_test:
        from shoal.loadtest.runner import self_test as measure
        from shoal.loadtest.scenario import parse_duration

        secs = parse_duration(duration, "--duration") if duration else 5.0
        n = clients or 40
        rec = measure(n, secs, workers or 1)
        info = machine_info()
        Console().print(f"generator ceiling: {rec.throughput:,.0f} req/s with {n} clients, {workers or 1} "
                        f"worker(s), {secs:g}s against the no-op server (P50 {rec.hist.percentile_ms(50):.2f} ms, "
                        f"P99 {rec.hist.percentile_ms(99):.2f} ms, {rec.error_count} errors); "
                        f"{info['nproc']} CPUs, {info['cpu_model']}", highlight=False)
        if json_path:
            from shoal.loadtest.report import write_json

            write_json(json_path, {"tool": "shoal loadtest --self-test", "clients": n, "workers": workers or 1,
                                   "machine": info, **rec.summary()})
        if rec.ok == 0:
            raise ShoalError("self-test got no successful response from the no-op server")
        return
    if video:
        from shoal.loadtest.scenario import parse_duration
        from shoal.loadtest.video import VideoOptions, run_video
        from shoal.vision.frames import parse_size

        run_video(VideoOptions(
            target=target, plan=plan, model_ids=_csv(model_ids), cameras=cameras, fps=5.0 if fps is None else fps,
            duration_s=parse_duration(duration or "30s", "--duration"), frame_size=parse_size(frame_size),
            timeout_s=parse_duration(timeout or "30s", "--timeout"), seed=seed, json_path=json_path,
            max_error_rate=0.01 if max_error_rate is None else max_error_rate, host=host, namespace=namespace,
            base_url_template=base_url_template), console)
        return
    opts = LoadtestOptions(
        target=target, plan=plan, base_url_template=base_url_template, host=host, namespace=namespace,
        model_ids=_csv(model_ids), scenario=scenario, clients=clients, rate=rate, duration=duration,
        requests=requests, warmup=warmup, models=models, payload=payload, dns_cache=dns_cache, single=single,
        workers=workers, timeout=timeout, max_error_rate=max_error_rate, json_path=json_path, ceiling=ceiling,
        ceiling_seconds=ceiling_seconds, price_per_hour=price_per_hour, instance_type=instance_type, fps=fps,
        capacity=capacity, seed=seed, progress=progress, protocol=protocol)
    outcome = run_loadtest(opts, console)
    if not outcome.passed:
        ov = outcome.result.overall
        if ov.total == 0:
            raise ShoalError("the run sent no request: check --duration/--requests")
        if len(outcome.result.stages) == 1:
            raise ShoalError(f"error rate {ov.error_rate:.2%} ({ov.error_count:,} of {ov.total:,}) exceeds "
                             f"--max-error-rate {outcome.document['max_error_rate']:g}")
        bad = "; ".join(f"{w['label']}: {w['error_rate']:.2%} of {w['requests']:,} > {w['limit']:g}"
                        for w in outcome.document["failed_windows"])
        raise ShoalError(f"error rate over the limit in {bad}")


def register(app: typer.Typer) -> None:
    app.command("loadtest")(loadtest)
    from shoal.loadtest.sweep_cli import sweep

    bench_app.command("sweep")(sweep)
    app.add_typer(bench_app, name="bench")
