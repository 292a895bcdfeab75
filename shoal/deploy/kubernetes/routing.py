"""Routing: the model id -> server URL table as a ConfigMap, and optional Ingress rules.

Why a table and not a single front door: with thousands of models, the client (or a
thin router, or the load tester) picks the one server that holds a model; every hop
through a shared gateway adds latency and a DNS lookup the reference paid dearly for.
"""

from __future__ import annotations

import json

from shoal.deploy.fleet_sizing import ServerSizing
from shoal.deploy.kubernetes.options import APP, KubeOptions, labels, metadata
from shoal.errors import UsageError
from shoal.pack.plan_file import Plan

CONFIGMAP_LIMIT = 1 << 20  # bytes of data the API server accepts in one ConfigMap


def routing_table(plan: Plan, opts: KubeOptions) -> dict[str, str]:
    return {model: opts.server_url(server) for model, server in sorted(plan.routing.items())}


def routing_configmap(plan: Plan, opts: KubeOptions, plan_id: str) -> dict:
    """``routing.json`` (model -> URL) and ``servers.json`` (server -> URL) for routers and clients."""
    routing = json.dumps(routing_table(plan, opts), indent=0)
    servers = json.dumps({s.name: opts.server_url(s.name) for s in plan.servers}, indent=0)
    size = len(routing) + len(servers)
    if size > CONFIGMAP_LIMIT:
        raise UsageError(f"the routing table is {size} bytes, over the 1 MiB a ConfigMap holds: "
                         "use shorter model ids or split the plan into namespaces")
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": metadata(f"{APP}-routing", opts.namespace, labels(component="routing", plan_id=plan_id)),
            "data": {"routing.json": routing + "\n", "servers.json": servers + "\n"}}


def ingress(sizing: ServerSizing, opts: KubeOptions, plan_id: str) -> dict:
    """One Ingress per server with a path per model: ``/predictions/<id>`` and ``/v2/models/<id>``.

    Per server, so each object stays small and a plan change touches only the servers it moves.
    """
    name = sizing.server.name
    backend = {"service": {"name": name, "port": {"name": "http"}}}
    paths = [{"path": f"{prefix}/{model}", "pathType": "Prefix", "backend": backend}
             for model in sizing.server.models for prefix in ("/predictions", "/v2/models")]
    rule: dict = {"http": {"paths": paths}}
    if opts.ingress_host:
        rule = {"host": opts.ingress_host, **rule}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": metadata(name, opts.namespace, labels(name, component="routing", plan_id=plan_id)),
            "spec": {"ingressClassName": opts.ingress_class, "rules": [rule]}}
