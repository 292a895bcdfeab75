"""Grafana dashboard and Prometheus alerts as cluster objects (``shoal deploy kubernetes --dashboards``).

The dashboard goes in a ConfigMap labelled ``grafana_dashboard: "1"``, the label Grafana's
dashboard sidecar (kube-prometheus-stack, the Grafana Helm chart) watches for; the alerts
go in a PrometheusRule for the Prometheus Operator. Both carry the plan's labels, so an
operator finds them with the rest of the rendered plan.
"""

from __future__ import annotations

from shoal.deploy.kubernetes.options import APP, KubeOptions, labels, metadata
from shoal.deploy.monitoring.alerts import prometheus_rule
from shoal.deploy.monitoring.export import dashboard_text

DASHBOARD_KEY = "shoal-dashboard.json"
SIDECAR_LABEL = "grafana_dashboard"


def dashboard_configmap(opts: KubeOptions, plan_id: str) -> dict:
    lbls = {**labels(component="monitoring", plan_id=plan_id), SIDECAR_LABEL: "1"}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": metadata(f"{APP}-grafana-dashboard", opts.namespace, lbls),
            "data": {DASHBOARD_KEY: dashboard_text()}}


def alert_rule(opts: KubeOptions, plan_id: str) -> dict:
    return prometheus_rule(opts.namespace, labels(component="monitoring", plan_id=plan_id))


def dashboard_docs(opts: KubeOptions, plan_id: str) -> list[dict]:
    return [dashboard_configmap(opts, plan_id), alert_rule(opts, plan_id)]
