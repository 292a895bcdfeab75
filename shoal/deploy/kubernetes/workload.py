"""Per-server workload objects: the server's plan ConfigMap, Deployment, Service and PDB.

Why each server gets its own ConfigMap holding a plan with only that server: a change to
one server's model list then rolls only that server's pods (the pod template carries the
hash of its own plan), and a 3,000-model plan never has to fit one 1 MiB ConfigMap.
"""

from __future__ import annotations

import hashlib

from shoal.deploy.fleet_sizing import GIB, MIB, ServerSizing
from shoal.deploy.kubernetes.options import APP, PLAN_DIR, PORT, KubeOptions, labels, metadata, selector
from shoal.pack.plan_file import Plan

CACHE_DIR = "/var/cache/shoal"
USER_ID = 10001
TAINTS = {"gpu": "nvidia.com/gpu", "inf1": "aws.amazon.com/neuron", "inf2": "aws.amazon.com/neuron"}


def _mib(n: int) -> str:
    return f"{max(1, n // MIB)}Mi"


def server_plan(plan: Plan, sizing: ServerSizing) -> Plan:
    """The plan a server's pod reads: its own entry, its instance and its routes, nothing plan-wide
    that changes on every `shoal pack` (timestamps, costs), so unchanged servers do not roll."""
    s = sizing.server
    return Plan(version=plan.version, store=plan.store, max_memory=plan.max_memory, max_compute=plan.max_compute,
                instances=[i for i in plan.instances if i.name == s.instance], servers=[s],
                routing={m: s.name for m in s.models})


def plan_configmap(plan: Plan, sizing: ServerSizing, opts: KubeOptions, plan_id: str) -> tuple[dict, str]:
    """(ConfigMap, sha256 of its plan.json) for one server."""
    text = server_plan(plan, sizing).model_dump_json(indent=1)
    digest = hashlib.sha256(text.encode()).hexdigest()
    name = sizing.server.name
    doc = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": metadata(f"{name}-plan", opts.namespace, labels(name, "plan", plan_id)),
           "data": {"plan.json": text + "\n"}}
    return doc, digest


def _command(sizing: ServerSizing, opts: KubeOptions) -> tuple[list[str], list[str]]:
    name = sizing.server.name
    common = ["--plan", f"{PLAN_DIR}/plan.json", "--server", name, "--port", str(PORT)]
    if sizing.device.kind == "neuron":
        # The Neuron device plugin picks the cores and says which in NEURON_RT_VISIBLE_CORES; the
        # server must use exactly those, so the device is read at start rather than fixed here.
        last = sizing.neuron_cores - 1
        line = (f'exec shoal serve --store "$SHOAL_STORE" {" ".join(common)} '
                f'--device "neuron:${{NEURON_RT_VISIBLE_CORES:-0-{last}}}"')
        return ["/bin/sh", "-c"], [line]
    device = "cuda:0" if sizing.device.kind == "cuda" else "cpu"  # a pod sees its one GPU as cuda:0
    return ["shoal"], ["serve", "--store", opts.store, *common, "--device", device]


def _env(sizing: ServerSizing, opts: KubeOptions) -> list[dict]:
    env = {"SHOAL_HOST": "0.0.0.0", "SHOAL_PORT": str(PORT), "SHOAL_STORE": opts.store,
           "SHOAL_THREADS": str(sizing.threads), "OMP_NUM_THREADS": str(sizing.threads),
           "SHOAL_MEMORY_BUDGET": str(sizing.memory_budget), "SHOAL_CACHE_DIR": CACHE_DIR,
           "SHOAL_STATE_DIR": "/tmp/shoal", "SHOAL_REQUEST_TIMEOUT_S": str(opts.request_timeout_s),
           "HOME": "/tmp", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if opts.s3_endpoint_url:
        env["SHOAL_S3_ENDPOINT_URL"] = opts.s3_endpoint_url
    out = [{"name": k, "value": v} for k, v in env.items()]
    # Management routes need a bearer token when the operator creates the Secret; optional otherwise.
    out.append({"name": "SHOAL_TOKEN", "valueFrom": {"secretKeyRef": {"name": f"{APP}-token", "key": "token",
                                                                       "optional": True}}})
    return out


def _resources(sizing: ServerSizing) -> dict:
    requests = {"cpu": f"{sizing.cpu_millis}m", "memory": _mib(sizing.memory_bytes),
                "ephemeral-storage": _mib(cache_bytes(sizing))}
    limits = {"memory": _mib(sizing.memory_bytes)}  # no CPU limit: throttling hurts latency more than sharing
    for resource, count in sizing.accelerators.items():
        requests[resource] = str(count)
        limits[resource] = str(count)
    return {"requests": requests, "limits": limits}


def cache_bytes(sizing: ServerSizing) -> int:
    """Local disk for artifacts fetched from the store: the server's models, plus headroom."""
    return int(sizing.server.memory_bytes * 1.5) + GIB


def _probe(path: str, period: int, failures: int, timeout: int = 3) -> dict:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": timeout,
            "failureThreshold": failures}


def _container(sizing: ServerSizing, opts: KubeOptions) -> dict:
    command, args = _command(sizing, opts)
    return {
        "name": "server", "image": opts.image(sizing.server.processor), "imagePullPolicy": "IfNotPresent",
        "command": command, "args": args,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": _env(sizing, opts), "resources": _resources(sizing),
        # Loading every model of the plan can take minutes: the startup probe gives it 10, then
        # liveness restarts a hung process and readiness keeps traffic away until models are loaded.
        "startupProbe": _probe("/v2/health/live", 5, 120),
        "readinessProbe": _probe("/v2/health/ready", 5, 2),
        "livenessProbe": _probe("/v2/health/live", 10, 3, timeout=5),
        # Drain: stay up while endpoints and kube-proxy rules drop this pod, then SIGTERM lets
        # in-flight requests finish within the grace period.
        "lifecycle": {"preStop": {"sleep": {"seconds": opts.drain_seconds}}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "plan", "mountPath": PLAN_DIR, "readOnly": True},
                         {"name": "cache", "mountPath": CACHE_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }


def _pod_spec(sizing: ServerSizing, opts: KubeOptions) -> dict:
    name, processor = sizing.server.name, sizing.server.processor
    spec: dict = {
        "serviceAccountName": APP, "automountServiceAccountToken": False,
        # Hundreds of Services in one namespace would otherwise become thousands of env vars per pod.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": opts.drain_seconds + opts.request_timeout_s + 5,
        "nodeSelector": {"node.kubernetes.io/instance-type": sizing.instance.name, "kubernetes.io/os": "linux"},
        "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]},
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
             "labelSelector": {"matchLabels": selector(name)}}
            for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")],
        "containers": [_container(sizing, opts)],
        "volumes": [{"name": "plan", "configMap": {"name": f"{name}-plan"}},
                    {"name": "cache", "emptyDir": {"sizeLimit": _mib(cache_bytes(sizing))}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    }
    security: dict = {"seccompProfile": {"type": "RuntimeDefault"}, "fsGroup": USER_ID}
    if sizing.device.kind != "neuron":  # Neuron device nodes are root-owned on the node
        security.update(runAsNonRoot=True, runAsUser=USER_ID, runAsGroup=USER_ID)
    spec["securityContext"] = security
    if processor in TAINTS:
        spec["tolerations"] = [{"key": TAINTS[processor], "operator": "Exists", "effect": "NoSchedule"}]
    return spec


def deployment(sizing: ServerSizing, opts: KubeOptions, plan_sha: str, plan_id: str) -> dict:
    """No ``replicas``: the HPA owns the count, and re-applying must not reset it."""
    name, processor = sizing.server.name, sizing.server.processor
    pod_labels = labels(name, processor=processor)
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT),
                   "prometheus.io/path": "/metrics", "shoal.dev/plan-sha256": plan_sha}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata(name, opts.namespace, labels(name, processor=processor, plan_id=plan_id),
                             {"shoal.dev/models": str(len(sizing.server.models)),
                              "shoal.dev/device": sizing.server.device,
                              "shoal.dev/instance": sizing.server.instance}),
        "spec": {
            "revisionHistoryLimit": 3,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "selector": {"matchLabels": selector(name)},
            "template": {"metadata": {"labels": pod_labels, "annotations": annotations},
                         "spec": _pod_spec(sizing, opts)},
        },
    }


def service(sizing: ServerSizing, opts: KubeOptions, plan_id: str) -> dict:
    """One stable name per server: <server>.<namespace>.svc.<cluster domain>."""
    name = sizing.server.name
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(name, opts.namespace, labels(name, processor=sizing.server.processor,
                                                              plan_id=plan_id)),
            "spec": {"type": "ClusterIP", "selector": selector(name),
                     "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}]}}


def disruption_budget(sizing: ServerSizing, opts: KubeOptions, plan_id: str) -> dict:
    """At most one pod of a server evicted at a time (node drains, cluster-autoscaler scale-down)."""
    name = sizing.server.name
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata(name, opts.namespace, labels(name, plan_id=plan_id)),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name)},
                     "unhealthyPodEvictionPolicy": "AlwaysAllow"}}
