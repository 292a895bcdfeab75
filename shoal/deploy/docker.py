"""Docker runtime: one `docker run` per server of the plan, and building the images in build/.

Why containers per server and not one per host: the same unit as a Kubernetes pod (one
device slot, one image per processor), so a plan tried with Docker on one accelerator
host behaves like it will on the cluster. Without a Docker engine, one clear line.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from shoal import __version__
from shoal.deploy.fleet_sizing import NEURON_CORES_PER_CHIP, ServerSizing, size_fleet
from shoal.devices import PROCESSORS
from shoal.errors import ShoalError, UsageError
from shoal.pack.plan_file import Plan
from shoal.store import parse_store_uri

CONTAINER_PORT = 8080
LABEL = "shoal.deploy=docker"
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION")


def image_name(processor: str, tag: str = __version__, registry: str = "") -> str:
    name = f"shoal-{processor}:{tag}"
    return f"{registry.rstrip('/')}/{name}" if registry else name


def engine_problem(timeout: float = 20.0) -> str | None:
    """None when a Docker engine answers `docker info`, else why not (one line)."""
    try:
        result = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                                text=True, timeout=timeout)
    except FileNotFoundError:
        return "the docker command is not installed"
    except subprocess.TimeoutExpired:
        return f"`docker info` did not answer within {timeout:.0f} s"
    if result.returncode != 0 or not result.stdout.strip():
        lines = [ln.strip() for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
        return f"no Docker engine answers `docker info` ({lines[-1] if lines else 'no output'})"
    return None


def build_images(processors: list[str], tag: str = __version__, registry: str = "",
                 context: Path = Path("."), log=print) -> bool:
    """Build build/Dockerfile.<processor> for each processor; False (after one line) without an engine."""
    unknown = [p for p in processors if p not in PROCESSORS]
    if unknown:
        raise UsageError(f"unknown processor {unknown[0]!r}: images exist for {', '.join(PROCESSORS)}")
    problem = engine_problem()
    if problem:
        log(f"container images: skipped, {problem}")
        return False
    for processor in processors:
        dockerfile = context / "build" / f"Dockerfile.{processor}"
        if not dockerfile.is_file():
            raise UsageError(f"{dockerfile} does not exist: run from the repository root")
        tag_ref = image_name(processor, tag, registry)
        log(f"building {tag_ref} from {dockerfile}")
        result = subprocess.run(["docker", "build", "-f", str(dockerfile), "-t", tag_ref, str(context)])
        if result.returncode != 0:
            raise ShoalError(f"docker build of {tag_ref} failed (exit {result.returncode}); see the output above")
    return True


@dataclass(frozen=True)
class DockerOptions:
    store: str
    state_dir: Path
    tag: str = __version__
    registry: str = ""
    bind: str = "127.0.0.1"
    network: str | None = None
    instance: str | None = None
    s3_endpoint_url: str | None = None


def container_name(server: str) -> str:
    return server if server.startswith("shoal-") else f"shoal-{server}"


def _store_mount(store: str) -> tuple[str, list[str]]:
    """(store URI inside the container, docker args): a local folder is mounted read-only at /store."""
    where = parse_store_uri(store)
    if where.folder is None:
        return store, []
    folder = where.folder.expanduser().resolve()
    if not folder.is_dir():
        raise UsageError(f"store folder {folder} does not exist: run ./build.sh first or pass --store")
    return "file:///store", ["-v", f"{folder}:/store:ro"]


def _device_args(z: ServerSizing) -> tuple[str, list[str]]:
    """(device inside the container, docker args that expose it)."""
    if z.device.kind == "cuda":
        return "cuda:0", ["--gpus", f"device={z.device.first}"]
    if z.device.kind == "neuron":
        # A container sees only the chips passed to it, numbered from 0: shift the core range.
        chips = z.neuron_chips
        shift = chips[0] * NEURON_CORES_PER_CHIP[z.server.processor]
        first, last = (z.device.first or 0) - shift, (z.device.last or 0) - shift
        args = [a for chip in chips for a in ("--device", f"/dev/neuron{chip}")]
        return (f"neuron:{first}-{last}" if last != first else f"neuron:{first}"), args
    if z.device.cores:
        cores = z.device.cores
        return str(z.device), ["--cpuset-cpus", f"{cores[0]}-{cores[-1]}"]
    return "cpu", []


@dataclass(frozen=True)
class Container:
    name: str
    url: str
    argv: list[str]


def run_commands(plan: Plan, plan_file: Path, opts: DockerOptions,
                 catalog_path: Path | None = None) -> list[Container]:
    """The `docker run` of every selected server; raises UsageError on a bad plan or flag."""
    sizings = size_fleet(plan, catalog_path=catalog_path, allow_local=True)
    if opts.instance:
        sizings = [z for z in sizings if z.server.instance == opts.instance]
        if not sizings:
            raise UsageError(f"the plan has no server on instance {opts.instance!r}")
    ports = [z.server.port for z in sizings]
    dup = {p for p in ports if ports.count(p) > 1}
    if dup:
        hosts = sorted({z.server.instance for z in sizings})
        hint = f": run each instance on its own host with --instance (one of {', '.join(hosts[:5])}" + \
            (", ...)" if len(hosts) > 5 else ")") if len(hosts) > 1 else ""
        raise UsageError(f"servers of the plan share host port {min(dup)}; one Docker host needs distinct ports{hint}")
    store, store_args = _store_mount(opts.store)
    host_net = opts.network == "host"
    commands = []
    for z in sizings:
        device, device_args = _device_args(z)
        port = z.server.port if host_net else CONTAINER_PORT
        name = container_name(z.server.name)
        argv = ["docker", "run", "-d", "--name", name, "--restart", "unless-stopped",
                "--label", LABEL, "--label", f"shoal.server={z.server.name}",
                *(["--network", opts.network] if opts.network else []),
                *([] if host_net else ["-p", f"{opts.bind}:{z.server.port}:{CONTAINER_PORT}"]),
                "-v", f"{plan_file.resolve()}:/etc/shoal/plan.json:ro", *store_args, *device_args,
                "-e", "SHOAL_HOST=0.0.0.0" if not host_net else f"SHOAL_HOST={opts.bind}",
                "-e", f"SHOAL_THREADS={z.threads}", "-e", "HF_HUB_OFFLINE=1", "-e", "TRANSFORMERS_OFFLINE=1"]
        if opts.s3_endpoint_url:
            argv += ["-e", f"SHOAL_S3_ENDPOINT_URL={opts.s3_endpoint_url}"]
        argv += [a for name in AWS_ENV if name in os.environ for a in ("-e", name)]  # values stay off argv
        argv += [image_name(z.server.processor, opts.tag, opts.registry), "serve", "--store", store,
                 "--plan", "/etc/shoal/plan.json", "--server", z.server.name, "--device", device,
                 "--port", str(port)]
        commands.append(Container(name, f"http://{opts.bind}:{z.server.port}", argv))
    return commands


def _docker(args: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def write_plan(plan: Plan, opts: DockerOptions) -> Path:
    folder = opts.state_dir / "docker"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plan.json"
    plan.save(path)
    return path


def run_fleet(plan: Plan, opts: DockerOptions, catalog_path: Path | None = None, wait_s: float = 0.0,
              log=print) -> list[str]:
    """Start every server's container (replacing ones of the same name); returns their URLs."""
    plan_file = opts.state_dir / "docker" / "plan.json"
    commands = run_commands(plan, plan_file, opts, catalog_path)  # checks the plan before touching Docker
    problem = engine_problem()
    if problem:
        raise ShoalError(f"cannot deploy with Docker: {problem}")
    write_plan(plan, opts)
    for c in commands:
        _docker(["rm", "-f", c.name])
        result = _docker(c.argv[1:], timeout=600.0)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise ShoalError(f"docker run {c.name} failed: {last} (stop the others with `shoal deploy docker --down`)")
        log(f"started {c.name} -> {c.url}")
    urls = [c.url for c in commands]
    if wait_s > 0:
        wait_ready(urls, wait_s)
        log(f"all {len(urls)} servers ready")
    return urls


def wait_ready(urls: list[str], timeout_s: float) -> None:
    """Poll /v2/health/ready until every server answers 200, or raise after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    pending = list(urls)
    while pending:
        for url in list(pending):
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as resp:
                    if resp.status == 200:
                        pending.remove(url)
            except (urllib.error.URLError, OSError):
                pass
        if pending and time.monotonic() > deadline:
            raise ShoalError(f"{len(pending)} server(s) not ready after {timeout_s:.0f} s, e.g. {pending[0]} "
                             "(see `docker logs`)")
        if pending:
            time.sleep(1.0)


def stop_fleet(log=print) -> int:
    """Remove every container this runtime started; returns how many."""
    problem = engine_problem()
    if problem:
        raise ShoalError(f"cannot stop Docker servers: {problem}")
    ids = _docker(["ps", "-aq", "--filter", f"label={LABEL}"]).stdout.split()
    if ids:
        _docker(["rm", "-f", *ids])
    log(f"removed {len(ids)} shoal container(s)")
    return len(ids)


def format_commands(commands: list[Container]) -> str:
    return "\n".join(shlex.join(c.argv) for c in commands)
