"""`shoal serve`: one server process for one device slot, serving many models from the store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def serve(
    store: Annotated[Optional[str], typer.Option(help="store URI (default: the plan's, else SHOAL_STORE)")] = None,
    models: Annotated[Optional[str], typer.Option(help="comma-separated model ids (default: every model in the "
                                                       "store)")] = None,
    plan: Annotated[Optional[Path], typer.Option(help="plan.json from `shoal pack`; use with --server")] = None,
    server: Annotated[Optional[str], typer.Option(help="the plan's server to run: its models, device, port")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu | cpu:A-B | cuda:N | neuron:A-B")] = None,
    host: Annotated[Optional[str], typer.Option(help="address to bind (default 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="port (default 8080; 0 picks a free one)")] = None,
    grpc_port: Annotated[Optional[int], typer.Option(help="also serve KServe v2 gRPC on this port (off by default; "
                                                          "0 picks a free one)")] = None,
    executors: Annotated[Optional[int], typer.Option(help="forward-pass threads on the device (default: one per core on CPU)")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch threads per executor (default: cores / "
                                                        "executors, so 1 by default on CPU)")] = None,
    memory_budget: Annotated[Optional[str], typer.Option(help="resident model bytes before LRU eviction, e.g. "
                                                              "4GiB")] = None,
    disk_budget: Annotated[Optional[str], typer.Option(help="bytes the local disk cache may hold of its own "
                                                            "(S3 downloads), e.g. 50GiB (default: unbounded)")] = None,
    disk_prefetch: Annotated[Optional[str], typer.Option(help="auto | on | off: verify the catalog into the disk "
                                                             "tier in the background (auto: local stores)")] = None,
    max_load_wait: Annotated[Optional[float], typer.Option("--max-load-wait", help="seconds a request may wait "
                                                           "for a swap-in before 503 + Retry-After")] = None,
    preload: Annotated[Optional[str], typer.Option(help="all | none | N models loaded at start")] = None,
    max_batch_size: Annotated[Optional[int], typer.Option(help="override every manifest's max batch")] = None,
    max_delay_ms: Annotated[Optional[float], typer.Option(help="override every manifest's batching delay")] = None,
    batch_fairness: Annotated[Optional[float], typer.Option(help="how far (x average queue time) a batch-mate "
                                                                 "may overtake other models' requests")] = None,
    prefetch_batches: Annotated[Optional[int], typer.Option(help="batches queued to the executor threads beyond "
                                                                   "one each (0: hand over one at a time)")] = None,
    request_timeout: Annotated[Optional[float], typer.Option("--request-timeout", help="seconds before 504")] = None,
    token: Annotated[Optional[str], typer.Option(help="bearer token for /models routes (prefer SHOAL_TOKEN: "
                                                      "flags show in ps)")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Serve many models from the store in one process pinned to one device."""
    from shoal.config import load_settings
    from shoal.devices import parse_device
    from shoal.errors import UsageError
    from shoal.ids import check_model_id

    catalog: list[str] | None = None
    if plan is not None or server is not None:
        if plan is None or server is None:
            raise UsageError("--plan and --server go together: the plan file and the name of its server to run")
        if models:
            raise UsageError("give either --models or --plan/--server, not both")
        from shoal.pack.plan_file import load_plan

        the_plan = load_plan(plan)
        entry = the_plan.server(server)
        catalog = list(entry.models)
        store = store or the_plan.store or None
        device = device or entry.device
        port = entry.port if port is None else port
        if executors is None and threads is None and entry.threads and entry.device == "cpu":
            executors = entry.threads  # the plan sized this server at that many vCPUs
    elif models is not None:
        catalog = [m.strip() for m in models.split(",") if m.strip()]
        if not catalog:
            raise UsageError("--models is empty: give comma-separated ids, or omit it to serve the whole store")
    for model_id in catalog or []:
        check_model_id(model_id)
    if catalog is not None:
        catalog = list(dict.fromkeys(catalog))
    settings = load_settings(store=store, device=device, host=host, port=port, grpc_port=grpc_port,
                             executors=executors, threads=threads, memory_budget=memory_budget, preload=preload,
                             disk_budget=disk_budget, max_load_wait_s=max_load_wait, disk_prefetch=disk_prefetch,
                             max_batch_size=max_batch_size, max_delay_ms=max_delay_ms, batch_fairness=batch_fairness,
                             prefetch_batches=prefetch_batches, request_timeout_s=request_timeout, token=token)
    _check(settings)
    from shoal.jobs.service import AsyncService
    from shoal.server.serve import run

    # The command is the composition root: asynchronous jobs plug into the server here, so the
    # server package never imports the jobs package (which builds on the server's runtime).
    run(settings, parse_device(settings.device), catalog, log_level, extensions=[AsyncService])


def _check(settings: "object") -> None:
    """Reject nonsense settings with one line before anything heavy starts."""
    from shoal.config import Settings, parse_bytes
    from shoal.errors import UsageError

    assert isinstance(settings, Settings)
    parse_bytes(settings.memory_budget)
    if settings.disk_budget:
        parse_bytes(settings.disk_budget)
    text = settings.preload.strip().lower()
    if text not in ("all", "none") and not (text.isdigit()):
        raise UsageError(f"--preload {settings.preload!r}: use all, none or a number of models")
    if (settings.executors is not None and settings.executors < 1) or (settings.threads is not None
                                                                        and settings.threads < 1):
        raise UsageError("--executors and --threads must be at least 1")
    if not 0 <= settings.port <= 65535:
        raise UsageError(f"--port {settings.port}: must be between 0 and 65535")
    if settings.grpc_port is not None and not 0 <= settings.grpc_port <= 65535:
        raise UsageError(f"--grpc-port {settings.grpc_port}: must be between 0 and 65535")
    if settings.grpc_port and settings.grpc_port == settings.port:
        raise UsageError(f"--grpc-port {settings.grpc_port} is the HTTP --port too: give gRPC its own port")
    if settings.max_batch_size is not None and settings.max_batch_size < 1:
        raise UsageError("--max-batch-size must be at least 1")
    if settings.request_timeout_s <= 0:
        raise UsageError("--request-timeout must be positive")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
