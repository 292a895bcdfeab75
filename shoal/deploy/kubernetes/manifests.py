"""`shoal deploy kubernetes`: a plan -> every manifest a cluster operator needs.

Layout of the output folder (``kubectl apply -f DIR`` applies the top level in order;
``kubectl apply -k DIR`` or an overlay uses the ``Kustomization`` file, which plain
``-f`` skips because it has no .yaml suffix):

    00-namespace.yaml        Namespace, ServiceAccount
    01-routing.yaml          ConfigMap shoal-routing (model id -> server URL)
    02-monitoring.yaml       ServiceMonitor (with --service-monitor)
    03-dashboards.yaml       Grafana dashboard ConfigMap, PrometheusRule alerts (with --dashboards)
    10-server-<name>.yaml    per server: plan ConfigMap, Deployment, Service, HPA, PDB [, Ingress]
    addons/*.yaml            kube-system: NodeLocal DNSCache, NVIDIA / Neuron device plugins
    helm/prometheus-adapter-values.yaml
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from shoal.deploy.fleet_sizing import ServerSizing, size_fleet
from shoal.deploy.kubernetes import addons
from shoal.deploy.kubernetes.asynchronous import AsyncOptions, apply_async
from shoal.deploy.kubernetes.autoscale import adapter_values, autoscaler, service_monitor
from shoal.deploy.kubernetes.options import APP, KubeOptions, labels, metadata
from shoal.deploy.kubernetes.output import dump, dump_all
from shoal.deploy.kubernetes.routing import ingress, routing_configmap
from shoal.deploy.kubernetes.workload import deployment, disruption_budget, plan_configmap, service
from shoal.devices import NEURON_PROCESSORS
from shoal.pack.plan_file import Plan


@dataclass
class Rendered:
    """Objects per output file, plus non-manifest files (Helm values, Kustomization)."""

    plan_id: str
    manifests: dict[str, list[dict]] = field(default_factory=dict)
    extra: dict[str, dict] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def documents(self) -> list[dict]:
        return [doc for docs in self.manifests.values() for doc in docs]

    def texts(self) -> dict[str, str]:
        out = {name: dump_all(docs) for name, docs in self.manifests.items()}
        out.update({name: dump(doc) for name, doc in self.extra.items()})
        return out


def plan_id(plan: Plan) -> str:
    """A short, stable fingerprint of the plan, stamped on every object as ``shoal.dev/plan``."""
    return hashlib.sha256(plan.model_dump_json().encode()).hexdigest()[:12]


def _namespace_docs(opts: KubeOptions, pid: str) -> list[dict]:
    sa_annotations = {"eks.amazonaws.com/role-arn": opts.role_arn} if opts.role_arn else None
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": opts.namespace, "labels": labels(component="namespace", plan_id=pid)}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": metadata(APP, opts.namespace, labels(component="server-identity", plan_id=pid),
                              sa_annotations),
         "automountServiceAccountToken": False},  # the servers never call the API server
    ]


def _server_docs(plan: Plan, sizing: ServerSizing, opts: KubeOptions, pid: str) -> list[dict]:
    config, sha = plan_configmap(plan, sizing, opts, pid)
    docs = [config, deployment(sizing, opts, sha, pid), service(sizing, opts, pid),
            autoscaler(sizing, opts, pid), disruption_budget(sizing, opts, pid)]
    if opts.ingress and sizing.server.models:
        docs.append(ingress(sizing, opts, pid))
    return docs


def _warnings(sizings: list[ServerSizing], gpu_slices: int) -> list[str]:
    out = []
    per_gpu: dict[tuple[str, int | None], int] = {}
    for z in sizings:
        if z.device.kind == "cuda" and z.instance.devices > 1:  # one-GPU nodes: CPU requests keep it 1:1
            key = (z.server.instance, z.device.first)
            per_gpu[key] = per_gpu.get(key, 0) + 1
    if gpu_slices > 1 and per_gpu and max(per_gpu.values()) == 1:
        out.append(f"every GPU server of the plan owns a whole GPU, but --gpu-slices {gpu_slices} lets the "
                   "scheduler put several on one GPU of a multi-GPU node: pass --gpu-slices 1")
    for z in sizings:
        if z.device.kind == "cpu" and z.server.memory_bytes > z.memory_budget:
            out.append(f"server {z.server.name}: its models need {z.server.memory_bytes / 2**30:.1f} GiB but "
                       f"its pod's share of {z.instance.name} allows {z.memory_budget / 2**30:.1f} GiB: "
                       "models will be evicted and reloaded")
    return out


def render(plan: Plan, opts: KubeOptions, catalog_path: Path | None = None,
           async_opts: AsyncOptions | None = None) -> Rendered:
    """Check everything first (raises UsageError), then build every object in memory."""
    opts.check()
    sizings = size_fleet(plan, catalog_path=catalog_path, gpu_slices=opts.gpu_slices,
                         neuron_resource=opts.neuron_resource)
    pid = plan_id(plan)
    out = Rendered(plan_id=pid, warnings=_warnings(sizings, opts.gpu_slices))
    out.manifests["00-namespace.yaml"] = _namespace_docs(opts, pid)
    out.manifests["01-routing.yaml"] = [routing_configmap(plan, opts, pid)]
    if opts.service_monitor:
        out.manifests["02-monitoring.yaml"] = [service_monitor(opts, pid)]
    if opts.dashboards:
        from shoal.deploy.kubernetes.dashboards import dashboard_docs  # imports Grafana's SDK: only when asked

        out.manifests["03-dashboards.yaml"] = dashboard_docs(opts, pid)
    for sizing in sizings:
        out.manifests[f"10-server-{sizing.server.name}.yaml"] = _server_docs(plan, sizing, opts, pid)
    if async_opts is not None:  # queued inference: KEDA scales these servers, down to zero
        apply_async(out.manifests, sizings, opts, async_opts, pid)
    by_processor: dict[str, list[str]] = {}
    for z in sizings:
        by_processor.setdefault(z.server.processor, []).append(z.instance.name)
    if opts.dns_cache:
        out.manifests["addons/nodelocaldns.yaml"] = addons.node_local_dns(opts)
    if "gpu" in by_processor:
        out.manifests["addons/nvidia-device-plugin.yaml"] = addons.nvidia_device_plugin(by_processor["gpu"], opts)
    neuron = [s for p in NEURON_PROCESSORS for s in by_processor.get(p, [])]
    if neuron:
        out.manifests["addons/neuron-device-plugin.yaml"] = addons.neuron_device_plugin(neuron)
    out.extra["helm/prometheus-adapter-values.yaml"] = adapter_values(opts)
    out.extra["Kustomization"] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                                  "resources": sorted(out.manifests)}
    return out
