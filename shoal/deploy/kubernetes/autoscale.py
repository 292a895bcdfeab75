"""Autoscaling: an HPA per server on the runtime's ``shoal_utilization`` gauge, and the
prometheus-adapter rule that serves that gauge through the custom metrics API.

Why utilization (in-flight / capacity) and not CPU: an accelerator server is saturated
long before its CPU is, and a server with many cold models is idle at any CPU level.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from shoal.deploy.fleet_sizing import ServerSizing
from shoal.deploy.kubernetes.options import APP, KubeOptions, labels, metadata

METRIC = "shoal_utilization"


def _quantity(fraction: float) -> str:
    return f"{round(fraction * 1000)}m"


def autoscaler(sizing: ServerSizing, opts: KubeOptions, plan_id: str) -> dict:
    """Scale up fast (load spikes queue requests at once), down slowly (reloading models is costly)."""
    name = sizing.server.name
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(name, opts.namespace, labels(name, plan_id=plan_id)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": opts.min_replicas, "maxReplicas": opts.max_replicas,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": METRIC},
                "target": {"type": "AverageValue", "averageValue": _quantity(opts.target_utilization)}}}],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
                    {"type": "Percent", "value": 100, "periodSeconds": 30},
                    {"type": "Pods", "value": 2, "periodSeconds": 30}]},
                "scaleDown": {"stabilizationWindowSeconds": 300, "selectPolicy": "Min", "policies": [
                    {"type": "Percent", "value": 50, "periodSeconds": 60},
                    {"type": "Pods", "value": 1, "periodSeconds": 60}]},
            },
        },
    }


def adapter_rule() -> dict:
    """One custom-metrics rule: the per-pod gauge, averaged over a minute to damp scrape noise."""
    return {
        "seriesQuery": f'{METRIC}{{namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": f"^{METRIC}$", "as": METRIC},
        "metricsQuery": f"max(avg_over_time({METRIC}{{<<.LabelMatchers>>}}[1m])) by (<<.GroupBy>>)",
    }


def adapter_values(opts: KubeOptions) -> dict:
    """Values for the prometheus-community/prometheus-adapter Helm chart."""
    url = urlsplit(opts.prometheus_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    base = f"{url.scheme}://{url.hostname}{url.path}"
    return {"prometheus": {"url": base, "port": port},
            "rules": {"default": False, "custom": [adapter_rule()]}}


def service_monitor(opts: KubeOptions, plan_id: str) -> dict:
    """For clusters running the Prometheus Operator instead of annotation-based scraping."""
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": metadata(APP, opts.namespace, labels(component="monitoring", plan_id=plan_id)),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": APP,
                                         "app.kubernetes.io/component": "model-server"}},
            "namespaceSelector": {"matchNames": [opts.namespace]},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
        },
    }
