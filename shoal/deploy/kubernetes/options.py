"""What the operator chooses when rendering a plan for Kubernetes, checked up front.

Why a separate object: every renderer module reads the same choices (namespace, image,
autoscaling bounds, add-ons), and all of them must be validated before anything is
written, so a bad flag gives one clear line and an untouched output folder.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from shoal import __version__
from shoal.deploy.fleet_sizing import check_dns_label
from shoal.errors import UsageError

APP = "shoal"
PORT = 8080
PLAN_DIR = "/etc/shoal"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_IMAGE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")


@dataclass(frozen=True)
class KubeOptions:
    """Rendering choices; defaults suit an EKS cluster with the add-ons of docs/DEPLOY.md."""

    store: str
    namespace: str = "shoal"
    registry: str = ""
    tag: str = __version__
    min_replicas: int = 1
    max_replicas: int = 4
    target_utilization: float = 0.7
    gpu_slices: int = 60
    neuron_resource: str = "neuroncore"
    ingress: bool = False
    ingress_class: str = "nginx"
    ingress_host: str | None = None
    dns_cache: bool = True
    cluster_dns_ip: str = "10.100.0.10"
    local_dns_ip: str = "169.254.20.10"
    cluster_domain: str = "cluster.local"
    service_monitor: bool = False
    dashboards: bool = False  # Grafana dashboard ConfigMap + PrometheusRule (03-dashboards.yaml)
    prometheus_url: str = "http://prometheus-server.monitoring.svc"
    role_arn: str | None = None
    s3_endpoint_url: str | None = None
    drain_seconds: int = 10
    request_timeout_s: int = 30

    def image(self, processor: str) -> str:
        name = f"{APP}-{processor}:{self.tag}"
        return f"{self.registry.rstrip('/')}/{name}" if self.registry else name

    def server_host(self, server: str) -> str:
        """The stable DNS name of a server's Service."""
        return f"{server}.{self.namespace}.svc.{self.cluster_domain}"

    def server_url(self, server: str) -> str:
        return f"http://{self.server_host(server)}:{PORT}"

    def check(self) -> KubeOptions:
        """Raise UsageError (one line) on the first bad choice."""
        check_dns_label(self.namespace, "namespace")
        if self.store.startswith("file://") or "://" not in self.store:
            raise UsageError(f"store {self.store!r} is a folder on this machine, which pods cannot read: "
                             "pass --store s3://BUCKET/PREFIX (the plan's store is used by default)")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise UsageError(f"replicas: need 1 <= --min-replicas ({self.min_replicas}) <= --max-replicas "
                             f"({self.max_replicas})")
        if not 0.05 <= self.target_utilization <= 1.0:
            raise UsageError(f"--target-utilization {self.target_utilization}: use a fraction between 0.05 and 1")
        if self.drain_seconds < 0 or self.request_timeout_s < 1:
            raise UsageError("--drain-seconds must be >= 0 and the request timeout >= 1 s")
        for what, value in (("--registry", self.registry), ("--tag", self.tag)):
            if value and not _IMAGE_PART.match(value):
                raise UsageError(f"{what} {value!r} is not a valid image reference part")
        if not self.tag:
            raise UsageError("--tag must not be empty")
        for what, value in (("--cluster-domain", self.cluster_domain), ("--ingress-host", self.ingress_host),
                            ("--ingress-class", self.ingress_class)):
            if value is not None and (len(value) > 253 or not _DNS_SUBDOMAIN.match(value)):
                raise UsageError(f"{what} {value!r} is not a DNS name (lower-case letters, digits, '-' and '.')")
        for what, value in (("--cluster-dns-ip", self.cluster_dns_ip), ("--local-dns-ip", self.local_dns_ip)):
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise UsageError(f"{what} {value!r} is not an IP address") from None
        if self.role_arn is not None and not re.match(r"^arn:aws[a-z-]*:iam::\d{12}:role/\S+$", self.role_arn):
            raise UsageError(f"--role-arn {self.role_arn!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
        if self.neuron_resource not in ("neuroncore", "device"):
            raise UsageError(f"--neuron-resource {self.neuron_resource!r}: use neuroncore or device")
        return self


def selector(server: str) -> dict[str, str]:
    """The labels that pick one server's pods (Service, PDB, spread constraints)."""
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": server}


def labels(server: str | None = None, component: str = "model-server", plan_id: str | None = None,
           processor: str | None = None) -> dict[str, str]:
    """Recommended labels; ``shoal.dev/plan`` lets an operator find objects left from an older plan."""
    out = {"app.kubernetes.io/name": APP, "app.kubernetes.io/part-of": APP,
           "app.kubernetes.io/managed-by": "shoal-deploy", "app.kubernetes.io/component": component}
    if server:
        out["app.kubernetes.io/instance"] = server
    if processor:
        out["shoal.dev/processor"] = processor
    if plan_id:
        out["shoal.dev/plan"] = plan_id
    return out


def metadata(name: str, namespace: str | None, lbls: dict[str, str],
             annotations: dict[str, str] | None = None) -> dict:
    meta: dict = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = lbls
    if annotations:
        meta["annotations"] = annotations
    return meta
