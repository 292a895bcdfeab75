"""Asynchronous servers on Kubernetes: the Redis queue and S3 job store in the pods' environment, and a
KEDA ScaledObject instead of the plain HPA, so an idle server scales to zero and comes back for work.

Why KEDA owns the HPA: scaling from zero needs a signal that exists while no pod runs, so
KEDA reads each model's Redis stream (whose length is its backlog: finished entries are
deleted) and wakes the Deployment; above zero, the HPA KEDA creates (named after the
server, with the same behaviour as the synchronous one) tracks ``shoal_utilization`` at
0.75 per pod. A second HPA on the same Deployment would fight KEDA's, so it is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlparse

from shoal.deploy.kubernetes.autoscale import METRIC, autoscaler
from shoal.deploy.fleet_sizing import ServerSizing
from shoal.deploy.kubernetes.options import APP, KubeOptions, labels, metadata
from shoal.errors import UsageError

KEDA_API = "keda.sh/v1alpha1"
SECRET = f"{APP}-async"  # optional Secret: keys webhook-secret, redis-password


@dataclass(frozen=True)
class AsyncOptions:
    """``shoal deploy kubernetes --async-queue redis://... --async-store s3://...``."""

    queue: str
    store: str
    servers: tuple[str, ...] = ()  # empty: every server of the plan
    target_utilization: float = 0.75
    backlog_per_pod: int = 32
    cooldown_s: int = 300
    polling_s: int = 15
    redis_password: bool = False  # read the password from Secret shoal-async, key redis-password

    @property
    def redis(self) -> tuple[str, int, int, bool, str]:
        """(host, port, database, tls, key prefix) of the queue URI."""
        p = urlparse(self.queue)
        prefix = dict(parse_qsl(p.query)).get("prefix", "shoal")
        db = p.path.strip("/") or "0"
        return p.hostname or "", p.port or 6379, int(db), p.scheme == "rediss", prefix

    def check(self) -> "AsyncOptions":
        p = urlparse(self.queue)
        if p.scheme not in ("redis", "rediss") or not p.hostname:
            raise UsageError(f"--async-queue {self.queue!r}: pods need a shared queue: redis://HOST:PORT/DB "
                             "(SQLite lives on one host)")
        if p.password or p.username:
            raise UsageError("--async-queue must not carry credentials (they would land in the manifests): put "
                             f"the password in Secret {SECRET} (key redis-password) and pass --async-redis-password")
        try:
            p.port
            self.redis
        except ValueError:
            raise UsageError(f"--async-queue {self.queue!r}: the port and database must be numbers") from None
        if not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", self.store):
            raise UsageError(f"--async-store {self.store!r}: pods need a shared job store: s3://bucket/prefix")
        if not 0.05 <= self.target_utilization <= 1.0:
            raise UsageError(f"--async-target-utilization {self.target_utilization}: a fraction in [0.05, 1]")
        if self.backlog_per_pod < 1 or self.cooldown_s < 0 or self.polling_s < 1:
            raise UsageError("--async-backlog-per-pod and polling must be >= 1, the cooldown >= 0")
        return self

    def wants(self, server: str) -> bool:
        return not self.servers or server in self.servers


def async_env(a: AsyncOptions) -> list[dict]:
    """Environment the server needs to accept and run jobs (secrets by reference, never inline)."""
    host, port, db, tls, prefix = a.redis
    env: list[dict] = []
    queue = a.queue
    if a.redis_password:
        env.append({"name": "SHOAL_REDIS_PASSWORD",
                    "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "redis-password"}}})
        scheme = "rediss" if tls else "redis"
        query = f"?prefix={prefix}" if prefix != "shoal" else ""
        queue = f"{scheme}://:$(SHOAL_REDIS_PASSWORD)@{host}:{port}/{db}{query}"  # expanded by the kubelet
    env += [{"name": "SHOAL_ASYNC_QUEUE", "value": queue}, {"name": "SHOAL_ASYNC_STORE", "value": a.store},
            {"name": "SHOAL_ASYNC_WEBHOOK_SECRET", "valueFrom": {"secretKeyRef": {
                "name": SECRET, "key": "webhook-secret", "optional": True}}}]
    return env


def scaled_object(sizing: ServerSizing, opts: KubeOptions, a: AsyncOptions, plan_id: str) -> dict:
    name = sizing.server.name
    host, port, db, tls, prefix = a.redis
    pods = f'namespace="{opts.namespace}",pod=~"{name}-[a-z0-9]+-[a-z0-9]+"'
    triggers: list[dict] = [{
        "type": "prometheus", "name": "utilization", "metricType": "AverageValue",
        "metadata": {"serverAddress": opts.prometheus_url, "query": f"sum({METRIC}{{{pods}}})",
                     "threshold": f"{a.target_utilization:g}", "activationThreshold": "0"}}]
    for i, model in enumerate(sizing.server.models):
        meta = {"address": f"{host}:{port}", "databaseIndex": str(db), "stream": f"{prefix}:stream:{model}",
                "streamLength": str(a.backlog_per_pod), "enableTLS": "true" if tls else "false"}
        trigger: dict = {"type": "redis-streams", "name": f"backlog-{i}", "metricType": "AverageValue",
                         "metadata": meta}
        if a.redis_password:
            trigger["authenticationRef"] = {"name": SECRET}
        triggers.append(trigger)
    behavior = autoscaler(sizing, opts, plan_id)["spec"]["behavior"]
    return {
        "apiVersion": KEDA_API, "kind": "ScaledObject",
        "metadata": metadata(name, opts.namespace, labels(name, "autoscaling", plan_id),
                             {"shoal.dev/async": "true"}),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": 0, "maxReplicaCount": opts.max_replicas,
            "pollingInterval": a.polling_s, "cooldownPeriod": a.cooldown_s,
            "advanced": {"horizontalPodAutoscalerConfig": {"name": name, "behavior": behavior}},
            "triggers": triggers,
        },
    }


def trigger_auth(opts: KubeOptions, plan_id: str) -> dict:
    """How KEDA reads the Redis password: from the same Secret the pods use."""
    return {"apiVersion": KEDA_API, "kind": "TriggerAuthentication",
            "metadata": metadata(SECRET, opts.namespace, labels(component="autoscaling", plan_id=plan_id)),
            "spec": {"secretTargetRef": [{"parameter": "password", "name": SECRET, "key": "redis-password"}]}}


def make_async(docs: list[dict], sizing: ServerSizing, opts: KubeOptions, a: AsyncOptions,
               plan_id: str) -> list[dict]:
    """One server's objects, turned async: env added, the plain HPA replaced by a ScaledObject."""
    out = []
    for doc in docs:
        if doc["kind"] == "HorizontalPodAutoscaler":
            continue
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]
            pod["metadata"].setdefault("annotations", {})["shoal.dev/async"] = "true"
            container = pod["spec"]["containers"][0]
            container["env"] = container["env"] + async_env(a)
        out.append(doc)
    out.append(scaled_object(sizing, opts, a, plan_id))
    return out


def apply_async(manifests: dict[str, list[dict]], sizings: list[ServerSizing], opts: KubeOptions,
                a: AsyncOptions, plan_id: str) -> None:
    """Turn the chosen servers of a rendered plan async (in place); UsageError on a bad choice."""
    a.check()
    names = {z.server.name for z in sizings}
    unknown = sorted(set(a.servers) - names)
    if unknown:
        raise UsageError(f"--async-servers names {unknown[0]!r}, which the plan does not have "
                         f"(servers: {', '.join(sorted(names)[:10])})")
    for z in sizings:
        if a.wants(z.server.name):
            key = f"10-server-{z.server.name}.yaml"
            manifests[key] = make_async(manifests[key], z, opts, a, plan_id)
    if a.redis_password:
        manifests["03-async.yaml"] = [trigger_auth(opts, plan_id)]
