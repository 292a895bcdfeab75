"""`shoal deploy local | status | logs | stop`: a supervised fleet of server processes on this machine."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from shoal.config import load_settings
from shoal.deploy.local.state import FleetPaths

# Piped output (scripts, tests) gets wide lines rather than a table squeezed into 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _models_text(models: list[str] | None, limit: int = 4) -> str:
    if models is None:
        return "all in store"
    shown = ", ".join(models[:limit])
    return shown + (f" (+{len(models) - limit} more)" if len(models) > limit else "")


def _print_endpoints(fleet: Any) -> None:
    width = max(len(s.name) for s in fleet.servers)
    for s in fleet.servers:
        grpc = f"grpc {s.grpc_address}  " if s.grpc_address else ""
        out.print(f"  {s.name:<{width}}  {s.url:<24} {grpc}{s.device:<9} {_models_text(s.models)}")


def _print_example(settings: Any, fleet: Any) -> None:
    from shoal.deploy.local.control import open_fleet_store
    from shoal.deploy.local.example import pick_example

    example = pick_example(fleet, open_fleet_store(settings)[0])
    if example is None:
        return
    out.print("\ntry it:")
    out.print(f"  {example.curl}")
    code, answer = example.run()
    if code == 200:
        out.print(f"  [dim]-> {code} {answer}[/dim]")
    else:
        err.print(f"[yellow]warning:[/yellow] that request answered {code or 'nothing'}: {answer}")


def local(
    plan: Annotated[Optional[Path], typer.Option(help="plan.json: one process per server of the plan")] = None,
    workers: Annotated[int, typer.Option(help="without a plan: K server processes, each on a slice of the cores")] = 1,
    models: Annotated[Optional[str], typer.Option(help="without a plan: only these ids (comma-separated)")] = None,
    store: Annotated[Optional[str], typer.Option(help="store URI (default: SHOAL_STORE or file://./store)")] = None,
    port: Annotated[Optional[int], typer.Option(help="first port (default: 8080, or a plan's own ports)")] = None,
    grpc_port: Annotated[Optional[int], typer.Option(help="also serve KServe v2 gRPC, on this port and the next "
                                                          "ones (one per server; off by default)")] = None,
    host: Annotated[Optional[str], typer.Option(help="address the servers listen on (default 127.0.0.1)")] = None,
    on_cpu: Annotated[bool, typer.Option("--on-cpu", help="run a GPU/Inferentia plan's servers on CPU slices")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="replace a fleet that is already running")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for every server to be ready")] = 180.0,
    wait: Annotated[bool, typer.Option(help="wait until every server is ready")] = True,
    grace: Annotated[float, typer.Option(help="seconds between SIGTERM and SIGKILL when stopping")] = 10.0,
    warm_fork: Annotated[bool, typer.Option(help="fork servers from a process that imported torch once "
                                                 "(fast restarts); --no-warm-fork starts each one cold")] = True,
) -> None:
    """Run the servers on this machine under a supervisor that restarts any that dies."""
    from shoal.deploy.local.control import StartOptions, start, wait_ready

    settings = load_settings(store=store)
    ids = [m.strip() for m in models.split(",") if m.strip()] if models else None
    opts = StartOptions(plan=plan, workers=workers, models=ids, port=port, grpc_port=grpc_port, host=host,
                        on_cpu=on_cpu, restart=restart, grace_s=grace, warm_fork=warm_fork)
    result = start(settings, opts)
    paths = FleetPaths.under(settings.state_dir)
    fleet = result.fleet
    if result.already_running:
        out.print(f"a local fleet is already running (supervisor pid {result.supervisor_pid}); "
                  "`./deploy.sh stop` first, or add --restart to start it again")
    else:
        err.print(f"started {len(fleet.servers)} server(s) under supervisor pid {result.supervisor_pid}; "
                  f"logs in {paths.rel(paths.logs)}/")
        if result.plan_moved:
            err.print(f"the plan's ports clash here, so servers run on {fleet.servers[0].port}.."
                      f"{fleet.servers[-1].port}; the plan as run: {paths.rel(paths.plan)} "
                      f"(use it with `shoal loadtest --plan {paths.rel(paths.plan)}`)")
    if wait:
        t0 = time.monotonic()
        wait_ready(settings, fleet, timeout,
                   lambda n, total: err.print(f"  ready: {n}/{total} ({time.monotonic() - t0:.1f} s)"))
    out.print(f"{len(fleet.servers)} server(s), store {fleet.store}:")
    _print_endpoints(fleet)
    if wait:
        _print_example(settings, fleet)
    out.print("\n./deploy.sh status | ./deploy.sh logs [--follow] | ./deploy.sh stop")


def status(as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False) -> None:
    """Each server's pid, port, device, models, readiness and restarts."""
    from shoal.deploy.local.control import status as fleet_status

    info = fleet_status(load_settings())
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    if not info["running"]:
        out.print("no local fleet is running (start one with ./deploy.sh)")
        return
    table = Table(title=f"local fleet: supervisor pid {info['supervisor_pid']}, store {info['store']}",
                  box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("server", "pid", "url", "device", "models", "ready", "restarts", "uptime", "last exit"):
        table.add_column(col, no_wrap=col != "last exit", overflow="fold")
    for s in info["servers"]:
        ready = "[green]yes[/green]" if s["ready"] else f"[yellow]no[/yellow] ({s['state']})"
        table.add_row(s["name"], str(s["pid"] or "-"), s["url"], s["device"], _models_text(s["models"], 3), ready,
                      str(s["restarts"]), f"{s['uptime_s']:.0f} s", s["last_exit"] or "-")
    out.print(table)
    out.print(f"logs: {info['supervisor_log']} and one file per server beside it (./deploy.sh logs)")


def logs(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines (Ctrl-C to stop)")] = False,
    server: Annotated[Optional[str], typer.Option(help="only this server's log")] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", help="lines of each log to show first")] = 40,
) -> None:
    """The supervisor's log and each server's log."""
    from shoal.deploy.local import logs as local_logs

    paths = FleetPaths.under(load_settings().state_dir)
    files = local_logs.log_files(paths, server)
    local_logs.show(files, lines, sys.stdout)
    if follow:
        try:
            local_logs.follow_while_running(paths, files, sys.stdout)
        except KeyboardInterrupt:
            pass


def stop() -> None:
    """Stop the supervisor and every server (SIGTERM, then SIGKILL after the grace period)."""
    from shoal.deploy.local.control import stop as stop_fleet
    from shoal.errors import ShoalError

    paths = FleetPaths.under(load_settings().state_dir)
    was_running, alive = stop_fleet(paths)
    if alive:
        raise ShoalError(f"{alive} server process(es) survived SIGKILL: see {paths.rel(paths.supervisor_log)}")
    out.print("stopped the local fleet" if was_running else "no local fleet is running")


def register(deploy_app: typer.Typer) -> None:
    deploy_app.command("local")(local)
    deploy_app.command("status")(status)
    deploy_app.command("logs")(logs)
    deploy_app.command("stop")(stop)
