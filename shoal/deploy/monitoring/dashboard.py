"""The shoal Grafana dashboard, built with Grafana's own typed builders (grafana-foundation-sdk).

Why builders and not JSON: the SDK's types follow Grafana's schema, so a misspelt option is a
Python error here rather than a panel that silently renders nothing. Every query reads only
``shoal_*`` / ``process_*`` series the server exports (tests/test_monitoring.py checks it against
a running server). ``python -m shoal.deploy.monitoring`` writes the JSON to deploy/grafana/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import common, prometheus, stat, timeseries
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement, SortOrder, TooltipDisplayMode
from grafana_foundation_sdk.models.dashboard import (DashboardCursorSync, DataSourceRef, VariableRefresh,
                                                     VariableSort)

UID = "shoal-overview"
RATE = "$__rate_interval"
SEL = 'job=~"$job"'  # every query is scoped to the chosen scrape jobs (one per server Service on Kubernetes)
MSEL = f'{SEL}, model=~"$model"'
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Graph:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""
    width: int = 12


def quantiles(metric: str, by: str, selector: str, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> tuple[Query, ...]:
    """P50/P90/P99 of a histogram over the rate window, grouped ``by`` (with le)."""
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return tuple(Query(f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
                       f"P{round(q * 100)}{suffix}") for q in qs)


TOTAL_RPS = f"sum(rate(shoal_inference_requests_total{{{SEL}}}[{RATE}]))"
ERROR_RATIO = (f'sum(rate(shoal_inference_requests_total{{{SEL}, status!~"2.."}}[{RATE}])) / '
               f"sum(rate(shoal_inference_requests_total{{{SEL}}}[{RATE}]))")

STATS: tuple[tuple[str, str, str], ...] = (
    ("Requests/s", "reqps", TOTAL_RPS),
    ("Error ratio", "percentunit", ERROR_RATIO),
    ("P99 latency", "s", f"histogram_quantile(0.99, sum by (le) (rate(shoal_request_duration_seconds_bucket"
                         f"{{{SEL}}}[{RATE}])))"),
    ("Utilization (max)", "percentunit", f"max(shoal_utilization{{{SEL}}})"),
    ("Resident models", "short", f"sum(shoal_models_resident{{{SEL}}})"),
    ("Resident bytes", "bytes", f"sum(shoal_resident_bytes{{{SEL}}})"),
)

ROWS: tuple[tuple[str, tuple[Graph, ...]], ...] = (
    ("Traffic and latency", (
        Graph("Requests/s, all models, by status", "reqps", (
            Query(TOTAL_RPS, "all"),
            Query(f"sum by (status) (rate(shoal_inference_requests_total{{{SEL}}}[{RATE}]))", "{{status}}"))),
        Graph("Requests/s per model", "reqps", (
            Query(f"sum by (model) (rate(shoal_inference_requests_total{{{MSEL}}}[{RATE}]))", "{{model}}"),),
              "Models past --per-model-metrics-limit report together as _all_; ids outside the catalog as _unknown_."),
        Graph("Latency, all models", "s", quantiles("shoal_request_duration_seconds", "", SEL),
              "Time inside the server, body read to response."),
        Graph("P99 latency per model", "s", quantiles("shoal_request_duration_seconds", "model", MSEL, (0.99,))),
        Graph("Errors by code", "reqps", (
            Query(f'sum by (status) (rate(shoal_inference_requests_total{{{SEL}, status!~"2.."}}[{RATE}]))',
                  "{{status}}"),),
              "429: queue bound (scale out); 503: model failed or store down; 504: deadline; 4xx: clients."),
        Graph("Error ratio per model", "percentunit", (
            Query(f'sum by (model) (rate(shoal_inference_requests_total{{{MSEL}, status!~"2.."}}[{RATE}])) / '
                  f"sum by (model) (rate(shoal_inference_requests_total{{{MSEL}}}[{RATE}]))", "{{model}}"),)),
    )),
    ("Queueing, batching and utilization", (
        Graph("Queue depth", "short", (
            Query(f"sum by (instance) (shoal_queue_depth{{{SEL}}})", "{{instance}}"),),
              "Inputs waiting for a batch, all models of a server."),
        Graph("Queue time per model (P99)", "s",
              quantiles("shoal_inference_queue_duration_seconds", "model", MSEL, (0.99,))),
        Graph("Batch size per model (mean)", "short", (
            Query(f"sum by (model) (rate(shoal_batch_size_sum{{{MSEL}}}[{RATE}])) / "
                  f"sum by (model) (rate(shoal_batch_size_count{{{MSEL}}}[{RATE}]))", "{{model}}"),)),
        Graph("Compute time per stage (P50, per batch)", "s",
              quantiles("shoal_inference_compute_duration_seconds", "stage", MSEL, (0.5,))),
        Graph("Utilization (the autoscaling signal)", "percentunit", (
            Query(f"shoal_utilization{{{SEL}}}", "{{instance}}"),),
              "In-flight requests / capacity; the HPA target is --target-utilization."),
        Graph("Executors busy", "percentunit", (
            Query(f"sum by (instance) (rate(shoal_device_busy_seconds{{{SEL}}}[{RATE}]))", "busy {{instance}}"),
            Query(f"sum by (instance) (shoal_executors_busy{{{SEL}}})", "running now {{instance}}")),
              "Busy executor-seconds per second (1.0 = one executor always busy)."),
    )),
    ("Models and memory", (
        Graph("Resident models", "short", (
            Query(f"sum by (instance) (shoal_models_resident{{{SEL}}})", "resident {{instance}}"),
            Query(f"sum by (instance) (shoal_models_catalog{{{SEL}}})", "catalog {{instance}}"))),
        Graph("Resident bytes and budget", "bytes", (
            Query(f"sum by (instance) (shoal_resident_bytes{{{SEL}}})", "resident {{instance}}"),
            Query(f"sum by (instance) (shoal_memory_budget_bytes{{{SEL}}})", "budget {{instance}}"),
            Query(f"sum by (instance) (process_resident_memory_bytes{{{SEL}}})", "process RSS {{instance}}"))),
        Graph("Loads and evictions", "ops", (
            Query(f"sum by (result) (rate(shoal_model_loads_total{{{SEL}}}[{RATE}]))", "loads {{result}}"),
            Query(f"sum(rate(shoal_model_evictions_total{{{SEL}}}[{RATE}]))", "evictions"),
            Query(f"sum(rate(shoal_load_shed_total{{{SEL}}}[{RATE}]))", "requests shed (no swap-in in time)")),
              "Evictions close to the load rate mean the budget is too small for the working set (thrashing)."),
        Graph("Swap-ins waiting for a load slot", "short", (
            Query(f"sum by (instance) (shoal_loads_pending{{{SEL}}})", "{{instance}}"),)),
        Graph("Cache hit ratio per model", "percentunit", (
            Query(f"sum by (model) (rate(shoal_model_cache_hits_total{{{MSEL}}}[{RATE}])) / "
                  f"(sum by (model) (rate(shoal_model_cache_hits_total{{{MSEL}}}[{RATE}])) + "
                  f"sum by (model) (rate(shoal_model_cache_misses_total{{{MSEL}}}[{RATE}])))", "{{model}}"),),
              "Requests that found their model resident."),
        Graph("Model load time (P50, P99)", "s",
              quantiles("shoal_model_load_duration_seconds", "", SEL, (0.5, 0.99))),
        Graph("Process CPU", "percentunit", (
            Query(f"sum by (instance) (rate(process_cpu_seconds_total{{{SEL}}}[{RATE}]))", "{{instance}}"),),
              "CPU seconds per second (1.0 = one core)."),
    )),
)


def _target(q: Query, ref: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(ref).datasource(DATASOURCE)


def _graph(g: Graph) -> timeseries.Panel:
    panel = (timeseries.Panel().title(g.title).unit(g.unit).height(8).span(g.width).datasource(DATASOURCE)
             .min(0).fill_opacity(10).line_width(1)
             .legend(common.VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST)
                     .placement(LegendPlacement.BOTTOM))
             .tooltip(common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING)))
    if g.description:
        panel = panel.description(g.description)
    for i, q in enumerate(g.queries):
        panel = panel.with_target(_target(q, chr(ord("A") + i)))
    return panel


def _stat(title: str, unit: str, expr: str) -> stat.Panel:
    return (stat.Panel().title(title).unit(unit).height(4).span(4).datasource(DATASOURCE)
            .with_target(_target(Query(expr, title), "A")))


def _variables() -> list[db.DatasourceVariable | db.QueryVariable]:
    def label_values(name: str, label: str, metric: str, scope: str) -> db.QueryVariable:
        return (db.QueryVariable(name).label(label).datasource(DATASOURCE)
                .query(f"label_values({metric}{scope}, {name})").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True).all_value(".*"))

    return [db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
            label_values("job", "Job", "shoal_models_catalog", ""),
            label_values("model", "Model", "shoal_inference_requests_total", f"{{{SEL}}}")]


def build() -> db.Dashboard:
    board = (db.Dashboard("shoal: multi-model inference").uid(UID).tags(["shoal", "inference"])
             .description("Requests, latency, queues, batching, utilization and the resident model set of "
                          "shoal servers (metrics in docs/ARCHITECTURE.md).")
             .refresh("30s").time("now-1h", "now").timezone("browser").tooltip(DashboardCursorSync.CROSSHAIR)
             .editable())
    for v in _variables():
        board = board.with_variable(v)
    for title, unit, expr in STATS:
        board = board.with_panel(_stat(title, unit, expr))
    for title, graphs in ROWS:
        board = board.with_row(db.Row(title))
        for g in graphs:
            board = board.with_panel(_graph(g))
    return board


def dashboard_json() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (what its import dialog and provisioning take)."""
    return json.loads(json.dumps(build().build(), cls=JSONEncoder))  # type: ignore[no-any-return]


def expressions(model: dict[str, Any]) -> list[str]:
    """Every PromQL expression in a dashboard model: panel targets and query variables."""
    out = [t["expr"] for p in model.get("panels", []) for t in p.get("targets", []) if "expr" in t]
    for v in model.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            out.append(q.get("query", "") if isinstance(q, dict) else str(q))
    return out
