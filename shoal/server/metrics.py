"""Prometheus metrics with Triton-like names and bounded cardinality.

Per-model labels are kept only while the catalog has at most
``per_model_metrics_limit`` models; past that every model reports as ``_all_`` so
thousands of models never explode the series count. ``shoal_utilization``
(in-flight ÷ capacity) is the autoscaling signal: its name is a contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

ALL = "_all_"
LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .075, .1, .15, .25, .5, 1.0, 2.5, 5.0, 10.0, 30.0)
LOAD_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class ModelMetrics:
    """Label children bound once per model, so the hot path does no label lookups."""

    request: object
    queue: object
    preprocess: object
    inference: object
    postprocess: object
    batch: object
    load: object
    hits: object
    misses: object
    evictions: object
    label: str


class Metrics:
    def __init__(self, catalog_size: int, per_model_limit: int) -> None:
        self.registry = CollectorRegistry()
        self.per_model = catalog_size <= per_model_limit
        self.limit = per_model_limit
        self._children: dict[str, ModelMetrics] = {}
        self._all: ModelMetrics | None = None
        self._status: dict[tuple[str, int], object] = {}
        r = self.registry
        ProcessCollector(registry=r)
        self.requests = Counter("shoal_inference_requests", "Inference requests by model and HTTP status",
                                ["model", "status"], registry=r)
        self.request_duration = Histogram("shoal_request_duration_seconds", "Request time inside the server",
                                          ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_duration = Histogram("shoal_inference_queue_duration_seconds",
                                        "Time from enqueue to the start of its batch", ["model"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.compute_duration = Histogram("shoal_inference_compute_duration_seconds",
                                          "Batch compute time by stage (preprocess, inference, postprocess)",
                                          ["model", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("shoal_batch_size", "Inputs per executed batch", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.load_duration = Histogram("shoal_model_load_duration_seconds",
                                       "Fetch + verify + load + warm-up time of a model", ["model"],
                                       buckets=LOAD_BUCKETS, registry=r)
        self.loads = Counter("shoal_model_loads", "Model loads by result (ok, failed)", ["model", "result"],
                             registry=r)
        self.hits = Counter("shoal_model_cache_hits", "Requests that found their model resident", ["model"],
                            registry=r)
        self.misses = Counter("shoal_model_cache_misses", "Requests that had to wait for a load", ["model"],
                              registry=r)
        self.load_shed = Counter("shoal_load_shed", "Requests answered 503 at once because their model could not "
                                 "be swapped in within their wait", registry=r)
        self.evictions = Counter("shoal_model_evictions", "Models evicted to fit the memory budget", ["model"],
                                 registry=r)

    def gauges(self, **sources: tuple[str, Callable[[], float]]) -> None:
        """Register callback gauges: name -> (help, function read at scrape time)."""
        for name, (doc, fn) in sources.items():
            Gauge(name, doc, registry=self.registry).set_function(fn)

    def label(self, model_id: str) -> str:
        if not self.per_model:
            return ALL
        if model_id in self._children or len(self._children) < self.limit:
            return model_id
        return ALL

    def model(self, model_id: str) -> ModelMetrics:
        child = self._children.get(model_id)
        if child is None:
            lab = self.label(model_id)
            if lab == ALL and self._all is not None:
                return self._all
            child = ModelMetrics(
                request=self.request_duration.labels(lab), queue=self.queue_duration.labels(lab),
                preprocess=self.compute_duration.labels(lab, "preprocess"),
                inference=self.compute_duration.labels(lab, "inference"),
                postprocess=self.compute_duration.labels(lab, "postprocess"),
                batch=self.batch_size.labels(lab), load=self.load_duration.labels(lab),
                hits=self.hits.labels(lab), misses=self.misses.labels(lab), evictions=self.evictions.labels(lab),
                label=lab)
            if lab != ALL:
                self._children[model_id] = child
            else:
                self._all = child
        return child

    def count(self, model_id: str, status: int) -> None:
        key = (model_id, status)
        child = self._status.get(key)
        if child is None:
            child = self.requests.labels(self.label(model_id), str(status))
            if len(self._status) < 64 * max(1, self.limit):
                self._status[key] = child
        child.inc()  # type: ignore[attr-defined]

    def render(self) -> bytes:
        return generate_latest(self.registry)
