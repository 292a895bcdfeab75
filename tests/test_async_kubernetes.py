"""Async servers on Kubernetes: built-in kinds validate strictly; the KEDA objects are checked against the
structure of KEDA's CRDs (keda.sh/v1alpha1 ScaledObject, TriggerAuthentication), which no validator ships."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from shoal.deploy.kubernetes.manifests import render
from shoal.deploy.kubernetes.asynchronous import AsyncOptions
from shoal.deploy.kubernetes.options import KubeOptions
from shoal.deploy.kubernetes.sample import sample_plan
from shoal.errors import UsageError

K8S = "1.33.0"
STORE = "s3://models/store"
QUEUE = "redis://redis.queues.svc:6379/2"

# From keda.sh_scaledobjects.yaml / keda.sh_triggerauthentications.yaml (KEDA 2.x)
SPEC_KEYS = {"advanced", "cooldownPeriod", "fallback", "idleReplicaCount", "initialCooldownPeriod",
             "maxReplicaCount", "minReplicaCount", "pollingInterval", "scaleTargetRef", "triggers"}
TRIGGER_KEYS = {"authenticationRef", "metadata", "metricType", "name", "type", "useCachedMetrics"}
REDIS_STREAMS = {"address", "host", "port", "usernameFromEnv", "passwordFromEnv", "stream", "consumerGroup",
                 "pendingEntriesCount", "streamLength", "lagCount", "activationLagCount", "enableTLS", "unsafeSsl",
                 "databaseIndex", "addressFromEnv", "hostFromEnv", "portFromEnv"}
PROMETHEUS = {"serverAddress", "query", "threshold", "activationThreshold", "namespace", "ignoreNullValues",
              "unsafeSsl", "customHeaders", "queryParameters"}


def check_scaled_object(doc: dict) -> None:
    assert doc["apiVersion"] == "keda.sh/v1alpha1" and doc["kind"] == "ScaledObject"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"} and doc["metadata"]["name"]
    spec = doc["spec"]
    assert set(spec) <= SPEC_KEYS and {"scaleTargetRef", "triggers"} <= set(spec)
    for key, low in (("minReplicaCount", 0), ("maxReplicaCount", 1), ("pollingInterval", 1), ("cooldownPeriod", 0)):
        if key in spec:
            assert isinstance(spec[key], int) and spec[key] >= low, key
    assert spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)
    ref = spec["scaleTargetRef"]
    assert set(ref) <= {"apiVersion", "envSourceContainerName", "kind", "name"} and ref["name"]
    triggers = spec["triggers"]
    assert isinstance(triggers, list) and triggers
    names = [t["name"] for t in triggers if "name" in t]
    assert len(names) == len(set(names)), "trigger names are unique"
    for t in triggers:
        assert set(t) <= TRIGGER_KEYS and isinstance(t["type"], str) and t["type"]
        assert isinstance(t["metadata"], dict) and all(isinstance(v, str) for v in t["metadata"].values())
        assert t.get("metricType", "AverageValue") in ("AverageValue", "Value", "Utilization")
        if "authenticationRef" in t:
            assert set(t["authenticationRef"]) <= {"name", "kind"} and t["authenticationRef"]["name"]
        known = {"redis-streams": REDIS_STREAMS, "prometheus": PROMETHEUS}[t["type"]]
        assert set(t["metadata"]) <= known, set(t["metadata"]) - known
    advanced = spec.get("advanced", {})
    assert set(advanced) <= {"horizontalPodAutoscalerConfig", "restoreToOriginalReplicaCount", "scalingModifiers"}
    hpa = advanced.get("horizontalPodAutoscalerConfig", {})
    assert set(hpa) <= {"behavior", "name"}
    if "behavior" in hpa:  # the same type as an HPA's: validate it inside one
        kubernetes_validate.validate({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 1,
                     "behavior": hpa["behavior"]}}, K8S, strict=True)


def check_trigger_auth(doc: dict) -> None:
    assert doc["apiVersion"] == "keda.sh/v1alpha1" and doc["kind"] == "TriggerAuthentication"
    for ref in doc["spec"]["secretTargetRef"]:
        assert set(ref) == {"parameter", "name", "key"}


def validate(docs: list[dict]) -> None:
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            check_scaled_object(doc)
        elif doc["kind"] == "TriggerAuthentication":
            check_trigger_auth(doc)
        elif doc["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(doc, K8S, strict=True)


def kinds(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_async_servers_scale_on_keda_to_zero_and_at_utilization_075() -> None:
    plan = sample_plan("cpu", 40)
    servers = [s.name for s in plan.servers]
    assert len(servers) >= 2
    opts = KubeOptions(store=STORE)
    rendered = render(plan, opts, async_opts=AsyncOptions(queue=f"{QUEUE}?prefix=jobs", store="s3://jobs/async",
                                                          servers=(servers[0],)))
    docs = rendered.documents()
    validate(docs)
    [so] = kinds(docs, "ScaledObject")
    assert so["metadata"]["name"] == servers[0]
    spec = so["spec"]
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] == opts.max_replicas
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": servers[0]}
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["name"] == servers[0], "KEDA's HPA keeps the name"
    util = next(t for t in spec["triggers"] if t["type"] == "prometheus")
    assert util["metadata"]["threshold"] == "0.75" and util["metricType"] == "AverageValue"
    assert "shoal_utilization" in util["metadata"]["query"]
    streams = [t["metadata"] for t in spec["triggers"] if t["type"] == "redis-streams"]
    models = plan.servers[0].models
    assert sorted(m["stream"] for m in streams) == sorted(f"jobs:stream:{m}" for m in models)
    assert all(m["address"] == "redis.queues.svc:6379" and m["databaseIndex"] == "2" for m in streams)
    assert all("consumerGroup" not in m for m in streams), "stream length (backlog) so the fleet can reach zero"

    hpas = {d["metadata"]["name"] for d in kinds(docs, "HorizontalPodAutoscaler")}
    assert servers[0] not in hpas and set(servers[1:]) <= hpas, "only the async server trades its HPA for KEDA"
    deploys = {d["metadata"]["name"]: d for d in kinds(docs, "Deployment")}
    env = {e["name"]: e for e in deploys[servers[0]]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SHOAL_ASYNC_QUEUE"]["value"] == f"{QUEUE}?prefix=jobs"
    assert env["SHOAL_ASYNC_STORE"]["value"] == "s3://jobs/async"
    assert env["SHOAL_ASYNC_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]["optional"] is True
    other = {e["name"] for e in deploys[servers[1]]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "SHOAL_ASYNC_QUEUE" not in other


def test_redis_password_comes_from_a_secret_for_pods_and_keda() -> None:
    plan = sample_plan("cpu", 10)
    rendered = render(plan, KubeOptions(store=STORE),
                      async_opts=AsyncOptions(queue="rediss://r:6380/0", store="s3://jobs", redis_password=True))
    docs = rendered.documents()
    validate(docs)
    [auth] = kinds(docs, "TriggerAuthentication")
    assert rendered.manifests["03-async.yaml"] == [auth]
    for so in kinds(docs, "ScaledObject"):
        for t in so["spec"]["triggers"]:
            if t["type"] == "redis-streams":
                assert t["authenticationRef"] == {"name": "shoal-async"} and t["metadata"]["enableTLS"] == "true"
    deploy = kinds(docs, "Deployment")[0]
    env = {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SHOAL_ASYNC_QUEUE"]["value"] == "rediss://:$(SHOAL_REDIS_PASSWORD)@r:6380/0"
    names = [e["name"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert names.index("SHOAL_REDIS_PASSWORD") < names.index("SHOAL_ASYNC_QUEUE"), "defined before it is used"
    assert "password" not in yaml.safe_dump_all(docs).lower().replace("redis-password", "").replace(
        "shoal_redis_password", "").replace("parameter: password", "")


@pytest.mark.parametrize("queue,store,servers,match", [
    ("sqlite:///x.sqlite", "s3://jobs", (), "shared queue"),
    ("redis://:hunter2@r:6379/0", "s3://jobs", (), "credentials"),
    ("redis://r:6379/zero", "s3://jobs", (), "numbers"),
    (QUEUE, "file:///tmp/jobs", (), "shared job store"),
    (QUEUE, "s3://jobs", ("no-such-server",), "does not have"),
])
def test_bad_async_choices_are_one_clear_error(queue: str, store: str, servers: tuple, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        render(sample_plan("cpu", 10), KubeOptions(store=STORE),
               async_opts=AsyncOptions(queue=queue, store=store, servers=servers))


def test_cli_renders_async_files_and_refuses_bad_flags(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(sample_plan("cpu", 10).model_dump_json())
    out = tmp_path / "k8s"
    ok = subprocess.run([sys.executable, "-m", "shoal.cli", "deploy", "kubernetes", "--plan", str(plan), "-o",
                         str(out), "--store", STORE, "--async-queue", QUEUE], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    docs = [d for f in sorted(out.glob("10-server-*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    validate(docs)
    so = kinds(docs, "ScaledObject")
    assert so and all(t["metadata"].get("stream", "").startswith("shoal:stream:") or t["type"] == "prometheus"
                      for s in so for t in s["spec"]["triggers"])
    env = {e["name"]: e.get("value") for e in kinds(docs, "Deployment")[0]["spec"]["template"]["spec"][
        "containers"][0]["env"]}
    assert env["SHOAL_ASYNC_STORE"] == f"{STORE}/_async"
    bad = subprocess.run([sys.executable, "-m", "shoal.cli", "deploy", "kubernetes", "--plan", str(plan), "-o",
                          str(tmp_path / "bad"), "--store", STORE, "--async-store", "s3://x/y"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--async-queue" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()
