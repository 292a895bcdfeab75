"""`shoal worker`: run asynchronous jobs for some models without serving HTTP predictions.

Same runtime as `shoal serve` (registry, batching, device pinning), fed only by the job
queue. SIGTERM or Ctrl-C drains: running jobs finish (up to SHOAL_ASYNC_DRAIN_S), the
rest go back to the queue, and the process exits 0. ``--port`` adds health and metrics
endpoints (for probes and the autoscaler).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer


def worker(
    store: Annotated[Optional[str], typer.Option(help="model store URI (default SHOAL_STORE)")] = None,
    models: Annotated[Optional[str], typer.Option(help="comma-separated model ids (default: every model in the "
                                                       "store)")] = None,
    queue: Annotated[Optional[str], typer.Option(help="sqlite:///PATH or redis://HOST:PORT/DB (default "
                                                      "SHOAL_ASYNC_QUEUE, else <state dir>/jobs.sqlite)")] = None,
    job_store: Annotated[Optional[str], typer.Option("--job-store", help="where payloads and results live "
                                                     "(default SHOAL_ASYNC_STORE, else <state dir>/async)")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu | cpu:A-B | cuda:N | neuron:A-B")] = None,
    executors: Annotated[Optional[int], typer.Option(help="forward-pass threads on the device")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch threads per executor")] = None,
    memory_budget: Annotated[Optional[str], typer.Option(help="resident model bytes, e.g. 4GiB")] = None,
    max_batch_size: Annotated[Optional[int], typer.Option(help="override every manifest's max batch")] = None,
    concurrency: Annotated[Optional[int], typer.Option(help="jobs in hand at once (default 8 x capacity, at "
                                                            "least 32)")] = None,
    host: Annotated[Optional[str], typer.Option(help="address for --port (default 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="serve /metrics and /v2/health/* on this port")] = None,
    log_level: Annotated[str, typer.Option(help="log level")] = "warning",
) -> None:
    """Run queued jobs for some models: results to the job store, webhooks when done."""
    from shoal.config import load_settings
    from shoal.devices import parse_device
    from shoal.errors import UsageError
    from shoal.ids import check_model_id
    from shoal.jobs.settings import load_async_settings

    catalog: list[str] | None = None
    if models is not None:
        catalog = list(dict.fromkeys(check_model_id(m.strip()) for m in models.split(",") if m.strip()))
        if not catalog:
            raise UsageError("--models is empty: give comma-separated ids, or omit it to serve the whole store")
    settings = load_settings(store=store, device=device, executors=executors, threads=threads,
                             memory_budget=memory_budget, max_batch_size=max_batch_size, host=host,
                             port=port)
    if settings.executors < 1 or (settings.threads is not None and settings.threads < 1):
        raise UsageError("--executors and --threads must be at least 1")
    if max_batch_size is not None and max_batch_size < 1:
        raise UsageError("--max-batch-size must be at least 1")
    async_settings = load_async_settings(async_queue=queue, async_store=job_store, async_concurrency=concurrency,
                                         async_workers=True)
    from shoal.jobs.run_worker import run_worker

    run_worker(settings, async_settings, parse_device(settings.device), catalog,
               port if port is not None else None, log_level)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
