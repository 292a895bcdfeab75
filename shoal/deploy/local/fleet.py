"""What a local fleet is: which server processes run on this machine, on which port and device.

Why a separate, serialisable description: the supervisor (a detached process) must
start exactly what the CLI decided, and `status` must show it later. The supervisor
only sees commands, environments and cores; it knows nothing about `shoal serve`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel, Field

from shoal.devices import Device, cpu_slices, parse_device, process_env, usable_cores
from shoal.errors import UsageError
from shoal.pack.plan_file import Plan

FLEET_VERSION = 1
# What `shoal serve` imports before it serves: the zygote imports these once for every server.
SERVE_PRELOAD = ["torch", "numpy", "tokenizers", "fastapi", "uvicorn", "uvloop", "httptools",
                 "prometheus_client", "shoal.cli", "shoal.server.serve", "shoal.server.app", "shoal.server.runtime", "shoal.jobs.service",
                 "shoal.server.handlers.text"]


class ServerSpec(BaseModel):
    """One supervised server process."""

    name: str
    host: str
    port: int
    grpc_port: int | None = Field(None, description="KServe v2 gRPC port (None: HTTP only)")
    device: str
    models: list[str] | None = Field(None, description="None = every model in the store")
    threads: int | None = None
    cores: list[int] | None = Field(None, description="CPU affinity of the process (None = all)")
    argv: list[str]
    env: dict[str, str] = Field(default_factory=dict, description="added to the supervisor's environment")

    @property
    def connect_host(self) -> str:
        """Where a client on this machine reaches the server (a wildcard bind is reached on loopback)."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)

    @property
    def url(self) -> str:
        host = self.connect_host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def grpc_address(self) -> str | None:
        host = self.connect_host
        if self.grpc_port is None:
            return None
        return f"[{host}]:{self.grpc_port}" if ":" in host else f"{host}:{self.grpc_port}"


class FleetSpec(BaseModel):
    """Everything the supervisor needs; written to <state>/deploy/fleet.json."""

    version: int = FLEET_VERSION
    store: str
    host: str
    servers: list[ServerSpec]
    plan: str | None = Field(None, description="the effective plan (ports as run here), if deployed from one")
    grace_s: float = 10.0
    warm_fork: bool = Field(True, description="fork servers from a zygote that imported torch once")
    preload: list[str] = Field(default_factory=list, description="modules the zygote imports")
    ready_path: str | None = Field("/v2/health/ready", description="GET answering 200 once a server serves")

    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    def same_servers(self, other: "FleetSpec") -> bool:
        """True when ``other`` would run the same processes (used to make a second deploy a no-op)."""
        # argv[0] is whichever interpreter path ran the CLI (python, python3): not a difference.
        key = lambda f: [(s.name, s.host, s.port, s.device, s.models, s.argv[1:]) for s in f.servers]  # noqa: E731
        return self.store == other.store and self.warm_fork == other.warm_fork and key(self) == key(other)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "FleetSpec":
        return cls.model_validate(json.loads(path.read_text()))


def serve_argv(store: str, device: Device, port: int, host: str, models: list[str] | None = None,
               plan: Path | None = None, server: str | None = None, grpc_port: int | None = None) -> list[str]:
    """The `shoal serve` command line for one server (same interpreter as this CLI)."""
    argv = [sys.executable, "-m", "shoal.cli", "serve", "--store", store, "--device", str(device),
            "--port", str(port), "--host", host]
    if grpc_port is not None:
        argv += ["--grpc-port", str(grpc_port)]
    if plan is not None and server is not None:
        argv += ["--plan", str(plan), "--server", server]
    elif models:
        argv += ["--models", ",".join(models)]
    return argv


def _server(name: str, store: str, host: str, port: int, device: Device, threads: int | None,
            models: list[str] | None, plan: Path | None = None, grpc_port: int | None = None) -> ServerSpec:
    env = process_env(device, threads)
    if threads:
        env["SHOAL_THREADS"] = str(threads)
    return ServerSpec(name=name, host=host, port=port, grpc_port=grpc_port, device=str(device), models=models,
                      threads=threads, cores=device.cores, env=env,
                      argv=serve_argv(store, device, port, host, models, plan, name if plan else None, grpc_port))


def _grpc_ports(grpc_base: int | None, http_ports: list[int]) -> list[int | None]:
    """gRPC ports base, base+1, ... beside the HTTP ones (None: no gRPC); overlapping ranges are refused."""
    if grpc_base is None:
        return [None] * len(http_ports)
    _check_port_range(grpc_base, len(http_ports), "--grpc-port")
    ports = [grpc_base + i for i in range(len(http_ports))]
    if set(ports) & set(http_ports):
        raise UsageError(f"--grpc-port {grpc_base}: the servers' gRPC ports {ports[0]}..{ports[-1]} overlap their "
                         f"HTTP ports {min(http_ports)}..{max(http_ports)}")
    return list(ports)


def workers_fleet(store: str, host: str, port: int, workers: int, models: list[str] | None = None,
                  cores: int | None = None, grpc_port: int | None = None) -> FleetSpec:
    """K CPU slices on ports P, P+1, ... (gRPC on G, G+1, ... when asked); each serves every model (or ``models``)."""
    slices = cpu_slices(workers, cores)
    _check_port_range(port, len(slices))
    grpc = _grpc_ports(grpc_port, [port + i for i in range(len(slices))])
    servers = [_server(f"shoal-{i}", store, host, port + i, dev, None, models, grpc_port=grpc[i])
               for i, dev in enumerate(slices)]
    return FleetSpec(store=store, host=host, servers=servers, preload=SERVE_PRELOAD)


def plan_fleet(plan: Plan, plan_copy: Path, store: str, host: str, port: int | None, on_cpu: bool,
               cores: int | None = None, grpc_port: int | None = None) -> tuple[FleetSpec, Plan]:
    """One process per ServerPlan; returns the fleet and the plan as run here (ports possibly moved).

    Ports: the plan's own when they are distinct (so `shoal loadtest --plan` routes to them), else
    ``port``, ``port``+1, ... (always so when --port is given). Devices: the plan's, when this machine
    has them; plain ``cpu`` servers sharing the machine split its threads; ``on_cpu`` maps every server
    onto a CPU slice so an accelerator plan can be tried here.
    """
    if not plan.servers:
        raise UsageError("the plan has no servers: run `shoal pack` with some models first")
    n = len(plan.servers)
    total = cores or usable_cores()
    plan_ports = [s.port for s in plan.servers]
    if port is None and len(set(plan_ports)) == n:
        ports = plan_ports
    else:
        base = 8080 if port is None else port
        _check_port_range(base, n)
        ports = [base + i for i in range(n)]
    devices = _plan_devices([s.device for s in plan.servers], on_cpu, total)
    shared_cpu = sum(1 for d in devices if d.kind == "cpu" and d.cores is None)
    servers = []
    grpc = _grpc_ports(grpc_port, ports)
    for s, p, dev, g in zip(plan.servers, ports, devices, grpc):
        threads = max(1, total // shared_cpu) if dev.kind == "cpu" and dev.cores is None and shared_cpu > 1 else None
        servers.append(_server(s.name, store, host, p, dev, threads, list(s.models), plan_copy, g))
    effective = plan.model_copy(deep=True)
    for s, p, dev in zip(effective.servers, ports, devices):
        s.port = p
        s.device = str(dev)
    effective.store = store
    return FleetSpec(store=store, host=host, servers=servers, plan=str(plan_copy), preload=SERVE_PRELOAD), effective


def _plan_devices(wanted: list[str], on_cpu: bool, total: int) -> list[Device]:
    devices = [parse_device(w) for w in wanted]
    if on_cpu:
        if len(devices) <= total:
            return cpu_slices(len(devices), total) if len(devices) > 1 else [Device("cpu")]
        return [Device("cpu", i % total, i % total) for i in range(len(devices))]
    for d in devices:
        if not device_available(d, total):
            raise UsageError(f"the plan puts a server on {d}, which this machine does not have: "
                             "add --on-cpu to run every server of the plan on a slice of this machine's cores")
    return devices


def device_available(device: Device, total_cores: int) -> bool:
    """Cheap presence check (device files), so the CLI never imports torch to answer it."""
    if device.kind == "cpu":
        return device.cores is None or max(device.cores) < total_cores
    if device.kind == "cuda":
        return Path(f"/dev/nvidia{device.first}").exists()
    return Path("/dev/neuron0").exists()  # NeuronCore ranges span devices; the runtime checks the range


def _check_port_range(base: int, count: int, flag: str = "--port") -> None:
    if base < 1 or base + count - 1 > 65535:
        raise UsageError(f"{flag} {base}: {count} servers need ports {base}..{base + count - 1}, "
                         "which must lie within 1..65535")
