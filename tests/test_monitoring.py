"""The Grafana dashboard and the alert rules: committed as generated, valid PromQL, and every series they
read is one the running server exports (with the labels they filter on).

PromQL is parsed with ``promql-parser`` (the Rust parser GreptimeDB uses, Python bindings); Grafana's
template variables are substituted first, as Grafana does before it sends a query.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.deploy.monitoring.alerts import ALERTS, prometheus_rule
from shoal.deploy.monitoring.alerts import expressions as rule_expressions
from shoal.deploy.monitoring.dashboard import dashboard_json
from shoal.deploy.monitoring.dashboard import expressions as dashboard_expressions
from shoal.deploy.monitoring.export import exported_files
from tests.server_fixtures import ServerProcess, server, store_uri, tiny_store  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
GRAFANA_VARS = {"$__rate_interval": "5m", '"$job"': '".*"', '"$model"': '".*"'}
# labels Prometheus adds at scrape time (or Kubernetes service discovery does), not the server
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}


def promql(expr: str) -> str:
    """A Grafana query as Prometheus receives it; ``label_values(selector, label)`` -> its selector."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    match = re.fullmatch(r"label_values\((.+),\s*\w+\)", expr.strip())
    return match.group(1) if match else expr


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names it filters on) of every vector selector in ``expr``; fails if it does not parse."""
    found: list[tuple[str, set[str]]] = []

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            labels = {m.name for m in node.matchers.matchers} - {"__name__"}
            name = node.name or next(m.value for m in node.matchers.matchers if m.name == "__name__")
            found.append((name, labels))
        return True

    promql_parser.walk(promql_parser.parse(promql(expr)), visit)
    return found


def all_expressions() -> list[str]:
    return dashboard_expressions(dashboard_json()) + rule_expressions(prometheus_rule())


@pytest.fixture(scope="module")
def exported(server: ServerProcess) -> dict[str, set[str]]:  # noqa: F811
    """Series name -> label names, from a server that has served, loaded, failed a load and evicted."""
    with server.client() as c:
        assert c.post("/predictions/tiny-cls", json={"text": "count me"}).status_code == 200
        assert c.post("/predictions/no-such-model", json={"text": "x"}).status_code == 404
        assert c.delete("/models/tiny-cls2").status_code == 200  # an eviction
        assert c.post("/predictions/tiny-cls2", json={"text": "reload me"}).status_code == 200  # a miss + a load
        text = c.get("/metrics").text
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def test_committed_files_are_what_the_code_builds() -> None:
    for rel, text in exported_files().items():
        assert (REPO / rel).read_text() == text, f"{rel} is stale: run python -m shoal.deploy.monitoring"


def test_dashboard_covers_what_operators_need() -> None:
    model = dashboard_json()
    titles = " | ".join(p.get("title", "") for p in model["panels"]).lower()
    for words in ("requests/s per model", "latency, all models", "p99 latency per model", "queue depth",
                  "batch size", "utilization", "resident models", "resident bytes", "loads and evictions",
                  "errors by code"):
        assert words in titles, words
    assert {v["name"] for v in model["templating"]["list"]} == {"datasource", "job", "model"}
    assert model["uid"] == "shoal-overview" and json.loads(json.dumps(model)) == model


def test_every_expression_parses() -> None:
    exprs = all_expressions()
    assert len(exprs) > 30
    for expr in exprs:
        assert selectors(expr), f"no metric in {expr!r}"


def test_every_expression_names_a_metric_the_server_exports(exported: dict[str, set[str]]) -> None:
    for expr in all_expressions():
        for name, labels in selectors(expr):
            assert name in exported, f"{name} (in {expr!r}) is not exported; the server has {sorted(exported)}"
            unknown = labels - exported[name] - TARGET_LABELS
            assert not unknown, f"{expr!r} filters {name} on labels it does not carry: {sorted(unknown)}"


def test_alerts_read_well_and_have_severities() -> None:
    names = [a.name for a in ALERTS]
    assert len(names) == len(set(names)) and all(n.startswith("Shoal") for n in names)
    for a in ALERTS:
        assert a.severity in {"critical", "warning", "info"} and a.summary and len(a.description) > 40
        assert not a.for_ or re.fullmatch(r"\d+[smh]", a.for_)
