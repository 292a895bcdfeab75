"""Scaling signals and job counters, registered on the runtime's Prometheus registry.

Gauges read a snapshot that a background task refreshes from the queue every few
seconds (a scrape never waits on SQLite or Redis). Labels are bounded: job state,
webhook result; never a model or job id. ``shoal_utilization`` (in-flight ÷
capacity, from the runtime) already counts jobs, which run through the same registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from shoal.jobs.queue import Backlog

WAIT_BUCKETS = (.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600)


@dataclass
class Snapshot:
    backlog: Backlog
    running_here: int = 0


class JobMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.snapshot = Snapshot(Backlog())
        r = registry
        self.finished = Counter("shoal_async_jobs", "Jobs finished by this process, by final state", ["state"],
                                registry=r)
        self.retries = Counter("shoal_async_job_retries", "Deliveries given back to the queue to run again",
                               registry=r)
        self.webhooks = Counter("shoal_async_webhooks", "Webhook deliveries by result (ok, failed)", ["result"],
                                registry=r)
        self.wait = Histogram("shoal_async_queue_wait_seconds", "Time from submission to a worker starting the job",
                              buckets=WAIT_BUCKETS, registry=r)
        self.run = Histogram("shoal_async_job_duration_seconds", "Time from a worker starting a job to its result",
                             buckets=WAIT_BUCKETS, registry=r)

    def sources(self) -> dict[str, tuple[str, object]]:
        """Callback gauges for ``Metrics.gauges``: names are a contract with the autoscalers."""
        s = self.snapshot
        return {
            "shoal_async_backlog": ("Jobs queued or running for this server's models (all instances)",
                                    lambda: s.backlog.total),
            "shoal_async_backlog_per_instance": ("Backlog / live instances serving the same models",
                                                 lambda: s.backlog.total / max(1, s.backlog.workers)),
            "shoal_async_has_backlog_without_capacity": ("1 when jobs wait and no worker serves these models",
                                                         lambda: 1 if s.backlog.total and not s.backlog.workers
                                                         else 0),
            "shoal_async_instances": ("Live workers serving this server's models", lambda: s.backlog.workers),
            "shoal_async_jobs_running": ("Jobs this process is working on now", lambda: s.running_here),
        }
