"""The local runtime: start a supervised fleet, wait until it is ready, report on it, stop it.

The CLI (cli.py) only parses flags and prints; tests call these functions too.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx

from shoal.config import Settings
from shoal.deploy.local.fleet import FleetSpec, ServerSpec, plan_fleet, workers_fleet
from shoal.deploy.local.state import (FleetPaths, pid_alive, read_json, read_pid, same_process,
                                      supervisor_running, terminate_groups)
from shoal.errors import ShoalError, UsageError
from shoal.pack.plan_file import Plan, load_plan
from shoal.store import ModelStore, open_store
from shoal.store.local import LocalStore

READY_PATH = "/v2/health/ready"
CRASH_LOOP = 3  # deaths before ever being ready that make `deploy local` give up


@dataclass
class StartOptions:
    plan: Path | None = None
    workers: int = 1
    models: list[str] | None = None
    port: int | None = None
    grpc_port: int | None = None  # first gRPC port (KServe v2), one per server like --port
    host: str | None = None
    on_cpu: bool = False
    restart: bool = False
    grace_s: float = 10.0
    warm_fork: bool = True


@dataclass
class StartResult:
    fleet: FleetSpec
    already_running: bool
    supervisor_pid: int | None
    plan_moved: bool = False


def open_fleet_store(settings: Settings) -> tuple[ModelStore, str]:
    """The store and its URI as servers should get it (a local folder made absolute)."""
    store = open_store(settings.store, cache_dir=settings.cache_dir, endpoint_url=settings.s3_endpoint_url,
                       region=settings.s3_region)
    if isinstance(store, LocalStore):
        store = LocalStore(store.root.absolute())
    return store, store.uri


@dataclass
class BuiltFleet:
    fleet: FleetSpec
    plan: Plan | None = None  # the plan as run here (ports, devices), if deployed from one
    plan_moved: bool = False  # ports differ from the input plan's


def build_fleet(settings: Settings, opts: StartOptions, paths: FleetPaths) -> BuiltFleet:
    """Decide the processes; check the store holds what they will serve."""
    store, uri = open_fleet_store(settings)
    ids = set(store.list_ids())
    host = opts.host or settings.host
    grpc_port = opts.grpc_port if opts.grpc_port is not None else settings.grpc_port
    if opts.plan is not None:
        plan = load_plan(opts.plan)
        fleet, effective = plan_fleet(plan, paths.plan, uri, host, opts.port, opts.on_cpu, grpc_port=grpc_port)
        wanted = [m for s in plan.servers for m in s.models]
        moved = [s.port for s in plan.servers] != [s.port for s in effective.servers]
        fleet.grace_s, fleet.warm_fork = opts.grace_s, opts.warm_fork
        _check_models(wanted, ids, uri)
        return BuiltFleet(fleet, effective, moved)
    if opts.models:
        _check_models(opts.models, ids, uri)
    elif not ids:
        raise UsageError(f"the store {uri} holds no models: run ./build.sh (or `shoal trace models/*.yaml`) first")
    fleet = workers_fleet(uri, host, settings.port if opts.port is None else opts.port, opts.workers, opts.models,
                          grpc_port=grpc_port)
    fleet.grace_s, fleet.warm_fork = opts.grace_s, opts.warm_fork
    return BuiltFleet(fleet)


def _check_models(wanted: list[str], have: set[str], uri: str) -> None:
    missing = sorted(set(wanted) - have)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UsageError(f"{len(missing)} model(s) to serve are not in the store {uri}: {shown} "
                         "(run ./build.sh, or pass --store)")


def port_in_use(host: str, port: int) -> bool:
    """True if something listens on host:port (TIME_WAIT leftovers do not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise UsageError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    return False


def start(settings: Settings, opts: StartOptions) -> StartResult:
    """Start the supervisor for a new fleet, or report the identical fleet already running."""
    paths = FleetPaths.under(settings.state_dir)
    built = build_fleet(settings, opts, paths)
    fleet = built.fleet
    if supervisor_running(paths):
        current = FleetSpec.load(paths.fleet) if paths.fleet.exists() else None
        if opts.restart:
            stop(paths)
        elif current is not None and current.same_servers(fleet):
            return StartResult(current, True, read_pid(paths.pid))
        else:
            ports = ", ".join(str(p) for p in (current.ports() if current else []))
            raise UsageError(f"a different local fleet is already running (ports {ports}): "
                             "`./deploy.sh stop` first, or add --restart to replace it")
    pid = launch(paths, fleet, built.plan)
    return StartResult(fleet, False, pid, plan_moved=built.plan_moved)


def launch(paths: FleetPaths, fleet: FleetSpec, plan: Plan | None = None) -> int:
    """Check the ports are free, write the fleet's files, start the supervisor; return its pid."""
    for s in fleet.servers:
        for port, flag in ((s.port, "--port"), (s.grpc_port, "--grpc-port")):
            if port is not None and port_in_use(s.host, port):
                raise UsageError(f"port {port} on {s.host} is already in use by another program (not this fleet): "
                                 f"stop it or choose another {flag}")
    paths.logs.mkdir(parents=True, exist_ok=True)
    if plan is not None:
        plan.save(paths.plan)
    fleet.save(paths.fleet)
    paths.state.unlink(missing_ok=True)
    _rotate_logs(paths, fleet)
    return _launch_supervisor(paths)


def _rotate_logs(paths: FleetPaths, fleet: FleetSpec) -> None:
    """Keep the previous run's logs as *.log.1, so each run starts with clean files."""
    for log in [paths.supervisor_log] + [paths.server_log(s.name) for s in fleet.servers]:
        if log.exists():
            log.replace(log.with_name(log.name + ".1"))


def _launch_supervisor(paths: FleetPaths) -> int:
    cmd = [sys.executable, "-m", "shoal.deploy.local.supervisor", str(paths.root)]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    answer = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode != 0 or not answer.isdigit():
        detail = answer or (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ShoalError(f"the supervisor did not start: {detail.removeprefix('error: ')} "
                         f"(see {paths.rel(paths.supervisor_log)})")
    return int(answer)


def probe_ready(server: ServerSpec, timeout_s: float = 1.0) -> bool:
    try:
        return httpx.get(server.url + READY_PATH, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def probe_all(fleet: FleetSpec, timeout_s: float = 1.0) -> dict[str, bool]:
    with ThreadPoolExecutor(max_workers=min(16, len(fleet.servers) or 1)) as pool:
        results = pool.map(lambda s: probe_ready(s, timeout_s), fleet.servers)
        return {s.name: ok for s, ok in zip(fleet.servers, results)}


def wait_ready(settings: Settings, fleet: FleetSpec, timeout_s: float,
               progress: Callable[[int, int], None] | None = None) -> None:
    """Block until every server answers ready; one clear error (and the log to read) otherwise."""
    paths = FleetPaths.under(settings.state_dir)
    deadline = time.monotonic() + timeout_s
    ever_ready: set[str] = set()
    last = -1
    while True:
        ready = probe_all(fleet, 0.5)
        ever_ready |= {n for n, ok in ready.items() if ok}
        n_ready = sum(ready.values())
        if progress and n_ready != last:
            progress(n_ready, len(fleet.servers))
            last = n_ready
        if n_ready == len(fleet.servers):
            return
        if not supervisor_running(paths):
            raise ShoalError(f"the supervisor stopped while servers were starting: see "
                             f"{paths.rel(paths.supervisor_log)}")
        state = read_json(paths.state).get("servers", {})
        for s in fleet.servers:
            st = state.get(s.name, {})
            if s.name not in ever_ready and st.get("consecutive_failures", 0) >= CRASH_LOOP:
                stop(paths)
                raise ShoalError(f"server {s.name} died {st['consecutive_failures']} times while starting "
                                 f"({st.get('last_exit')}); the fleet was stopped. Its log "
                                 f"{paths.rel(paths.server_log(s.name))} ends with:\n"
                                 + tail_text(paths.server_log(s.name), 15))
        if time.monotonic() >= deadline:
            late = [s for s in fleet.servers if not ready[s.name]]
            logs = ", ".join(paths.rel(paths.server_log(s.name)) for s in late)
            raise ShoalError(f"{len(late)} of {len(fleet.servers)} server(s) not ready after {timeout_s:.0f} s "
                             f"({', '.join(s.name for s in late)}); see {logs}. The fleet keeps running: "
                             "`./deploy.sh status`, `./deploy.sh logs`, `./deploy.sh stop`")
        time.sleep(0.25)


def tail_text(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return "  (no log yet)"
    return "\n".join("  " + ln for ln in data.splitlines()[-lines:])


def status(settings: Settings) -> dict[str, Any]:
    """What runs now: the supervisor, and per server its pid, port, device, models, readiness, restarts."""
    paths = FleetPaths.under(settings.state_dir)
    running = supervisor_running(paths)
    if not paths.fleet.exists():
        return {"running": running, "supervisor_pid": None, "servers": []}
    fleet = FleetSpec.load(paths.fleet)
    state = read_json(paths.state).get("servers", {}) if running else {}
    ready = probe_all(fleet) if running else {}
    servers = []
    for s in fleet.servers:
        st = state.get(s.name, {})
        servers.append({
            "name": s.name, "url": s.url, "port": s.port, "grpc": s.grpc_address, "device": s.device,
            "models": s.models, "pid": st.get("pid"), "state": st.get("state", "stopped"),
            "ready": ready.get(s.name, False), "restarts": st.get("restarts", 0),
            "uptime_s": st.get("uptime_s", 0.0), "last_exit": st.get("last_exit"),
            "log": paths.rel(paths.server_log(s.name)),
        })
    return {"running": running, "supervisor_pid": read_pid(paths.pid) if running else None,
            "zygote_pid": read_json(paths.state).get("zygote_pid") if running else None, "store": fleet.store, "plan": fleet.plan, "servers": servers,
            "supervisor_log": paths.rel(paths.supervisor_log)}


def stop(paths: FleetPaths, timeout_s: float | None = None) -> tuple[bool, int]:
    """Stop the supervisor and every server. Returns (a fleet was running, servers still alive: 0)."""
    fleet = FleetSpec.load(paths.fleet) if paths.fleet.exists() else None
    grace = fleet.grace_s if fleet else 10.0
    state = read_json(paths.state).get("servers", {})
    was_running = supervisor_running(paths)
    if was_running:
        pid = read_pid(paths.pid)
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else grace + 10)
        while supervisor_running(paths) and time.monotonic() < deadline:
            time.sleep(0.1)
        if supervisor_running(paths) and pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while supervisor_running(paths) and time.monotonic() < deadline + 5:
                time.sleep(0.05)
    # Whatever the supervisor could not stop (it was killed, or crashed): stop it here.
    leftovers = [st["pid"] for st in state.values()
                 if st.get("pid") and same_process(st["pid"], st.get("pid_start"))]
    if leftovers:
        terminate_groups(leftovers, grace)
    alive = sum(1 for p in leftovers if pid_alive(p))
    return was_running or bool(leftovers), alive
