"""`shoal deploy ...`: render and run the plan on local processes, Docker or Kubernetes.

This module owns the group and the kubernetes / docker / images / sample-plan commands;
the local runtime registers its own commands (local, status, logs, stop) when present.
Renderers are imported inside the commands so `shoal --help` stays instant.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from shoal import __version__
from shoal.config import load_settings
from shoal.errors import UsageError

deploy_app = typer.Typer(help="Render and run the plan on local processes, docker or kubernetes.",
                         no_args_is_help=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

PlanOpt = Annotated[Path, typer.Option("--plan", help="plan.json written by `shoal pack`")]
StoreOpt = Annotated[Optional[str], typer.Option(help="store URI the servers read (default: the plan's, "
                                                      "then SHOAL_STORE)")]
TagOpt = Annotated[str, typer.Option(help="image tag")]
RegistryOpt = Annotated[str, typer.Option(help="image registry prefix, e.g. 123456789012.dkr.ecr.us-east-1."
                                               "amazonaws.com")]
CatalogOpt = Annotated[Optional[Path], typer.Option(help="instance catalog YAML (default: the one `shoal pack` "
                                                         "uses)")]


def _store(plan_store: str, flag: str | None) -> str:
    return flag or plan_store or load_settings().store


@deploy_app.command("kubernetes")
def kubernetes(
    plan: PlanOpt = Path("plan.json"),
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="output folder (default: "
                                                                     "<state dir>/kubernetes)")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="kubectl apply the folder when a cluster answers")] = False,
    namespace: Annotated[str, typer.Option(help="namespace (a DNS-1123 label)")] = "shoal",
    store: StoreOpt = None,
    registry: RegistryOpt = "",
    tag: TagOpt = __version__,
    min_replicas: Annotated[int, typer.Option(help="HPA minimum pods per server")] = 1,
    max_replicas: Annotated[int, typer.Option(help="HPA maximum pods per server")] = 4,
    target_utilization: Annotated[float, typer.Option(help="HPA target of shoal_utilization per pod")] = 0.7,
    gpu_slices: Annotated[int, typer.Option(help="NVIDIA time-slicing replicas per GPU")] = 60,
    neuron_resource: Annotated[str, typer.Option(help="neuroncore (cores) or device (whole chips)")] = "neuroncore",
    ingress: Annotated[bool, typer.Option(help="render an Ingress per server routing /predictions/<id>")] = False,
    ingress_class: Annotated[str, typer.Option(help="IngressClass name")] = "nginx",
    ingress_host: Annotated[Optional[str], typer.Option(help="host the Ingress rules match")] = None,
    dns_cache: Annotated[bool, typer.Option(help="render NodeLocal DNSCache")] = True,
    cluster_dns_ip: Annotated[str, typer.Option(help="ClusterIP of kube-dns (EKS: 10.100.0.10 or "
                                                     "172.20.0.10)")] = "10.100.0.10",
    local_dns_ip: Annotated[str, typer.Option(help="link-local IP of the node DNS cache")] = "169.254.20.10",
    service_monitor: Annotated[bool, typer.Option(help="also render a Prometheus Operator ServiceMonitor")] = False,
    dashboards: Annotated[bool, typer.Option(help="also render the Grafana dashboard (ConfigMap for Grafana's "
                                                  "sidecar) and the alert rules (PrometheusRule)")] = False,
    prometheus_url: Annotated[str, typer.Option(help="Prometheus that prometheus-adapter queries")] =
        "http://prometheus-server.monitoring.svc",
    role_arn: Annotated[Optional[str], typer.Option(help="IAM role for the servers' ServiceAccount (IRSA)")] = None,
    s3_endpoint_url: Annotated[Optional[str], typer.Option(help="S3-compatible endpoint of the store")] = None,
    catalog: CatalogOpt = None,
    async_queue: Annotated[Optional[str], typer.Option(help="redis://HOST:PORT/DB: servers take /async jobs "
                                                            "and KEDA scales them, to zero when idle")] = None,
    async_store: Annotated[Optional[str], typer.Option(help="s3://bucket/prefix for job payloads and results "
                                                            "(default: <store>/_async)")] = None,
    async_servers: Annotated[Optional[str], typer.Option(help="comma-separated servers to make async (default: "
                                                              "all)")] = None,
    async_redis_password: Annotated[bool, typer.Option(help="read the Redis password from Secret shoal-async")] =
        False,
) -> None:
    """Render Namespace, per-server Deployment/Service/HPA/PDB, routing, add-ons; optionally apply."""
    from shoal.deploy.kubernetes.manifests import render
    from shoal.deploy.kubernetes.options import KubeOptions
    from shoal.deploy.kubernetes.output import MARKER, write_tree
    from shoal.deploy.kubernetes.output import apply as kubectl_apply
    from shoal.pack.plan_file import load_plan

    start = time.perf_counter()
    the_plan = load_plan(plan)
    settings = load_settings()
    opts = KubeOptions(
        store=_store(the_plan.store, store), namespace=namespace, registry=registry, tag=tag,
        min_replicas=min_replicas, max_replicas=max_replicas, target_utilization=target_utilization,
        gpu_slices=gpu_slices, neuron_resource=neuron_resource, ingress=ingress, ingress_class=ingress_class,
        ingress_host=ingress_host, dns_cache=dns_cache, cluster_dns_ip=cluster_dns_ip, local_dns_ip=local_dns_ip,
        service_monitor=service_monitor, dashboards=dashboards, prometheus_url=prometheus_url, role_arn=role_arn,
        s3_endpoint_url=s3_endpoint_url or settings.s3_endpoint_url,
        request_timeout_s=max(1, int(settings.request_timeout_s)))
    async_opts = None
    if async_queue or async_store or async_servers:
        from shoal.deploy.kubernetes.asynchronous import AsyncOptions

        if not async_queue:
            raise UsageError("--async-store and --async-servers need --async-queue redis://HOST:PORT/DB")
        async_opts = AsyncOptions(queue=async_queue, store=async_store or f"{opts.store.rstrip('/')}/_async",
                                  servers=tuple(x.strip() for x in (async_servers or "").split(",") if x.strip()),
                                  redis_password=async_redis_password)
    rendered = render(the_plan, opts, catalog, async_opts)
    folder = out or settings.state_dir / "kubernetes"
    write_tree(folder, rendered.texts(), {"plan": str(plan), "plan_id": rendered.plan_id,
                                          "namespace": namespace})
    for line in rendered.warnings:
        err.print(f"[yellow]warning:[/yellow] {line}")
    n_docs = len(rendered.documents())
    typer.echo(f"rendered {n_docs} objects for {len(the_plan.servers)} servers and {len(the_plan.routing)} models "
               f"into {folder} in {time.perf_counter() - start:.2f} s (plan {rendered.plan_id}; {MARKER} lists "
               "the files)")
    if apply:
        for line in kubectl_apply(folder):
            typer.echo(line)
    else:
        typer.echo(f"apply with: kubectl apply -f {folder}/addons && kubectl apply -f {folder}")


@deploy_app.command("docker")
def docker(
    plan: PlanOpt = Path("plan.json"),
    store: StoreOpt = None,
    registry: RegistryOpt = "",
    tag: TagOpt = __version__,
    bind: Annotated[str, typer.Option(help="host address the published ports listen on")] = "127.0.0.1",
    network: Annotated[Optional[str], typer.Option(help="docker network (host: no port mapping)")] = None,
    instance: Annotated[Optional[str], typer.Option(help="only the servers of this plan instance (multi-host)")] =
        None,
    wait: Annotated[float, typer.Option(help="seconds to wait for every server to be ready (0: don't)")] = 180.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the docker commands, run nothing")] = False,
    down: Annotated[bool, typer.Option("--down", help="remove the containers this command started")] = False,
    catalog: CatalogOpt = None,
) -> None:
    """Run one container per server of the plan (`--gpus` for GPU, `--device /dev/neuronN` for Inferentia)."""
    from shoal.deploy import docker as runtime
    from shoal.pack.plan_file import load_plan

    if down:
        runtime.stop_fleet(log=typer.echo)
        return
    the_plan = load_plan(plan)
    settings = load_settings()
    opts = runtime.DockerOptions(store=_store(the_plan.store, store), state_dir=settings.state_dir, tag=tag,
                                 registry=registry, bind=bind, network=network, instance=instance,
                                 s3_endpoint_url=settings.s3_endpoint_url)
    if dry_run:
        typer.echo(runtime.format_commands(runtime.run_commands(the_plan, settings.state_dir / "docker" /
                                                                "plan.json", opts, catalog)))
        return
    runtime.run_fleet(the_plan, opts, catalog, wait_s=wait, log=typer.echo)


@deploy_app.command("images")
def images(
    processor: Annotated[str, typer.Option(help="comma-separated: cpu,gpu,inf1,inf2")] = "cpu,gpu,inf1,inf2",
    registry: RegistryOpt = "",
    tag: TagOpt = __version__,
) -> None:
    """Build the container images from build/Dockerfile.<processor>; skips (one line) without Docker."""
    from shoal.deploy.docker import build_images

    build_images([p.strip() for p in processor.split(",") if p.strip()], tag=tag, registry=registry,
                 log=typer.echo)


@deploy_app.command("sample-plan")
def sample_plan_cmd(
    fleet: Annotated[str, typer.Option(help="cpu | gpu (time-sliced) | inf1 | inf2")] = "inf1",
    models: Annotated[int, typer.Option(help="number of synthetic model ids")] = 3000,
    models_per_server: Annotated[Optional[int], typer.Option(help="models per server (default per fleet)")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="where to write the plan")] = Path("plan.json"),
    store: Annotated[str, typer.Option(help="store URI written into the plan")] = "s3://shoal-models/store",
) -> None:
    """Write a synthetic plan (no models needed) to try or time the renderers."""
    from shoal.deploy.kubernetes.sample import sample_plan

    if out.exists() and out.is_dir():
        raise UsageError(f"{out} is a folder: pass a file name with -o")
    p = sample_plan(fleet, models, models_per_server, store)
    p.save(out)
    typer.echo(f"wrote {out}: {len(p.servers)} {fleet} servers on {len(p.instances)} instances, {models} models")


try:
    from shoal.deploy.local import cli as local_cli
except ModuleNotFoundError as exc:
    if exc.name != "shoal.deploy.local.cli":
        raise
else:
    local_cli.register(deploy_app)


def register(app: typer.Typer) -> None:
    app.add_typer(deploy_app, name="deploy")
