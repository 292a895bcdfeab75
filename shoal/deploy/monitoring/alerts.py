"""Prometheus alerting rules for shoal servers, as a Prometheus Operator ``PrometheusRule``.

Each alert says what an operator should do. Thresholds are starting points for the
defaults (30 s request deadline, bounded queues, LRU budget); tune them in the rendered
file. Every expression reads only series the server exports (tests/test_monitoring.py).
Aggregation keeps ``namespace`` and ``job`` (one job per server Service under a ServiceMonitor).
"""

from __future__ import annotations

from dataclasses import dataclass

BY = "namespace, job"
REQS = "shoal_inference_requests_total"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str  # how long it must hold before firing ('' fires at once)
    severity: str
    summary: str
    description: str

    def rule(self) -> dict:
        rule = {"alert": self.name, "expr": self.expr}
        if self.for_:
            rule["for"] = self.for_
        return {**rule, "labels": {"severity": self.severity},
                "annotations": {"summary": self.summary, "description": self.description}}


def _ratio(statuses: str, window: str = "5m") -> str:
    """Share of requests answered with ``statuses`` (a regex), per server job."""
    return (f'sum by ({BY}) (rate({REQS}{{status=~"{statuses}"}}[{window}])) / '
            f"sum by ({BY}) (rate({REQS}[{window}]))")


ALERTS: tuple[Alert, ...] = (
    Alert("ShoalServerMetricsAbsent", 'absent(shoal_models_catalog{job=~".+"})', "10m", "critical",
          "No shoal server is reporting metrics",
          "Prometheus scrapes no shoal server: every server is down, or the ServiceMonitor / scrape "
          "annotations no longer match. Check the pods and `kubectl get servicemonitor`."),
    Alert("ShoalServerErrors", f"{_ratio('5..')} > 0.05", "5m", "critical",
          "{{ $labels.job }}: {{ $value | humanizePercentage }} of requests fail with 5xx",
          "503 means a model failed to load (GET /models shows its reason) or the store is unreachable; "
          "504 means requests missed their deadline. The dashboard's 'Errors by code' panel tells which."),
    Alert("ShoalRequestsRejected", f"{_ratio('429')} > 0.01", "10m", "warning",
          "{{ $labels.job }}: {{ $value | humanizePercentage }} of requests rejected by full queues (429)",
          "The server's queues are full: the HPA should be adding replicas. Check that it can "
          "(max replicas, node capacity) and that shoal_utilization reaches it."),
    Alert("ShoalDeadlinesMissed", f"{_ratio('504')} > 0.01", "10m", "warning",
          "{{ $labels.job }}: {{ $value | humanizePercentage }} of requests miss their deadline (504)",
          "Requests wait longer than --request-timeout: the server is overloaded or a model loads slowly."),
    Alert("ShoalHighLatency",
          f"histogram_quantile(0.99, sum by (le, {BY}) (rate(shoal_request_duration_seconds_bucket[5m]))) > 2.5",
          "15m", "warning", "{{ $labels.job }}: P99 latency is {{ $value | humanizeDuration }}",
          "P99 above 2.5 s for 15 minutes. Compare queue time (queue) with compute time (device) on the "
          "dashboard: queueing means scale out, compute means a slower device or bigger inputs."),
    Alert("ShoalSaturated", f"max by ({BY}) (shoal_utilization) > 0.95", "15m", "warning",
          "{{ $labels.job }}: utilization {{ $value | humanizePercentage }} for 15 minutes",
          "In-flight requests stay at capacity: the autoscaler is at its maximum or is not acting on "
          "shoal_utilization (check prometheus-adapter and the HPA's events)."),
    Alert("ShoalModelLoadFailures",
          f'sum by ({BY}, model) (increase(shoal_model_loads_total{{result="failed"}}[15m])) > 0', "", "warning",
          "{{ $labels.job }}: model {{ $labels.model }} failed to load",
          "A model failed to load (corrupt or mismatched artifact, wrong processor). GET /models/<id> gives "
          "the reason; POST /models/<id>/load retries after a fix."),
    Alert("ShoalEvictionThrash",
          f"sum by ({BY}) (rate(shoal_model_evictions_total[15m])) * 60 > 2", "15m", "warning",
          "{{ $labels.job }}: {{ $value | humanize }} model evictions per minute",
          "The memory budget is too small for the models in use, so they are evicted and reloaded over and "
          "over. Raise --memory-budget, or re-pack the plan with fewer models per server."),
    Alert("ShoalRequestsShed",
          f"sum by ({BY}) (rate(shoal_load_shed_total[10m])) / sum by ({BY}) (rate({REQS}[10m])) > 0.01", "10m",
          "warning", "{{ $labels.job }}: {{ $value | humanizePercentage }} of requests shed waiting for a swap-in",
          "Requests for models that are not resident get 503 because no load slot frees up within their wait "
          "(--max-load-wait): the long tail needs more memory, more load workers, or more servers."),
    Alert("ShoalCacheMisses",
          f"sum by ({BY}) (rate(shoal_model_cache_misses_total[15m])) / "
          f"(sum by ({BY}) (rate(shoal_model_cache_hits_total[15m])) + "
          f"sum by ({BY}) (rate(shoal_model_cache_misses_total[15m]))) > 0.2", "30m", "info",
          "{{ $labels.job }}: {{ $value | humanizePercentage }} of requests wait for a model load",
          "Many requests find their model evicted. Expected for a long tail of rarely used models; if it "
          "persists for hot models, give the server more memory or fewer models."),
)


def rule_groups() -> list[dict]:
    return [{"name": "shoal.rules", "rules": [a.rule() for a in ALERTS]}]


def prometheus_rule(namespace: str | None = None, labels: dict[str, str] | None = None) -> dict:
    """The PrometheusRule object (monitoring.coreos.com/v1) holding every alert."""
    meta: dict = {"name": "shoal-alerts"}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = labels or {"app.kubernetes.io/name": "shoal", "app.kubernetes.io/component": "monitoring"}
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": meta,
            "spec": {"groups": rule_groups()}}


def expressions(rule: dict) -> list[str]:
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
