"""`shoal deploy kubernetes --dashboards`: the Grafana dashboard ConfigMap and the PrometheusRule.

The ConfigMap is validated strictly against Kubernetes 1.33 like every other manifest. The
PrometheusRule is a CRD, which kubernetes-validate has no schema for: its shape is checked
against the Prometheus Operator's documented fields (group and rule keys, Duration syntax,
string maps) and every expression is parsed as PromQL. A real Prometheus Operator would still
have the last word.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import kubernetes_validate
import promql_parser
import yaml

from shoal.deploy.kubernetes.manifests import render
from shoal.deploy.kubernetes.options import KubeOptions
from shoal.deploy.kubernetes.sample import sample_plan
from shoal.deploy.monitoring.export import DASHBOARD_FILE
from tests.test_deploy_kubernetes_cli import shoal, write_plan

K8S = "1.33.0"
REPO = Path(__file__).resolve().parent.parent
STORE = "s3://models/store"
# monitoring.coreos.com/v1 Duration: the pattern of the CRD's `for` / `interval` fields
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def validate_prometheus_rule(doc: dict) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"} and set(doc["spec"]) == {"groups"}
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}, K8S,
                                 strict=True)  # the metadata, through the real ObjectMeta schema
    names = [g["name"] for g in doc["spec"]["groups"]]
    assert len(names) == len(set(names))
    for group in doc["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "partial_response_strategy", "limit"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= RULE_KEYS and ("alert" in rule) != ("record" in rule), rule
            assert isinstance(rule["expr"], str)
            promql_parser.parse(rule["expr"])
            if "for" in rule:
                assert DURATION.match(rule["for"]), rule["for"]
            for key in ("labels", "annotations"):
                assert all(isinstance(k, str) and isinstance(v, str) for k, v in rule.get(key, {}).items())


def test_dashboards_render_as_configmap_and_rule() -> None:
    plan = sample_plan("cpu", 20)
    rendered = render(plan, KubeOptions(store=STORE, namespace="inference", dashboards=True))
    configmap, rule = rendered.manifests["03-dashboards.yaml"]
    kubernetes_validate.validate(configmap, K8S, strict=True)
    meta = configmap["metadata"]
    assert meta["namespace"] == "inference" and meta["labels"]["grafana_dashboard"] == "1"
    data = configmap["data"]["shoal-dashboard.json"]
    assert data == (REPO / DASHBOARD_FILE).read_text() and json.loads(data)["uid"] == "shoal-overview"
    validate_prometheus_rule(rule)
    assert rule["metadata"]["namespace"] == "inference"
    assert rule["metadata"]["labels"]["shoal.dev/plan"] == configmap["metadata"]["labels"]["shoal.dev/plan"]


def test_not_rendered_unless_asked() -> None:
    rendered = render(sample_plan("cpu", 20), KubeOptions(store=STORE))
    assert "03-dashboards.yaml" not in rendered.manifests
    assert not [d for d in rendered.documents() if d["kind"] == "PrometheusRule"]


def test_committed_rule_file_is_valid() -> None:
    doc = yaml.safe_load((REPO / "deploy/prometheus/shoal-alerts.yaml").read_text())
    validate_prometheus_rule(doc)


def test_cli_flag_writes_the_file(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.json", sample_plan("cpu", 10))
    result = shoal("deploy", "kubernetes", "--plan", "plan.json", "-o", "k8s", "--dashboards", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all((tmp_path / "k8s" / "03-dashboards.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "PrometheusRule"]
    kustomization = yaml.safe_load((tmp_path / "k8s" / "Kustomization").read_text())
    assert "03-dashboards.yaml" in kustomization["resources"]
