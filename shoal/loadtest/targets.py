"""Where each model's requests go, and which model each request asks for.

Why: a plan spreads models over many servers; the load test must send each model
id to the server the plan's routing table names (locally ``127.0.0.1:<port>``, on
Kubernetes ``<name>.<namespace>.svc.cluster.local:8080``), exactly as a client
of the deployment would.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shoal.errors import UsageError
from shoal.loadtest.http import Endpoint, parse_base_url, resolve_once

LOCAL_TEMPLATE = "http://{host}:{port}"
K8S_TEMPLATE = "http://{name}.{namespace}.svc.cluster.local:8080"


@dataclass
class Routes:
    """Server name -> endpoint, model id -> server name, and what we know of each model."""

    endpoints: dict[str, Endpoint]
    model_server: dict[str, str]
    tasks: dict[str, str | None] = field(default_factory=dict)
    price_per_hour: float | None = None
    instance_types: list[str] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        return list(self.model_server)

    def endpoint_of(self, model_id: str) -> Endpoint:
        return self.endpoints[self.model_server[model_id]]

    def with_dns_cache(self) -> "Routes":
        """Resolve every server host once; connections then go to the cached address."""
        cache: dict[str, str] = {}
        eps = {}
        for name, ep in self.endpoints.items():
            if ep.host not in cache:
                cache[ep.host] = resolve_once(ep).connect_host
            eps[name] = Endpoint(ep.host, ep.port, cache[ep.host])
        return Routes(eps, self.model_server, self.tasks, self.price_per_hour, self.instance_types)


def _parse_models_listing(data: object) -> dict[str, str | None]:
    """Accept the shapes a ``GET /models`` may answer with: ids, or objects with an id."""
    if isinstance(data, dict):
        data = data.get("models", data.get("data", list(data.keys())))
    out: dict[str, str | None] = {}
    if not isinstance(data, list):
        return out
    for item in data:
        if isinstance(item, str):
            out[item] = None
        elif isinstance(item, dict):
            mid = item.get("id") or item.get("model_id") or item.get("name")
            if isinstance(mid, str):
                task = item.get("task")
                out[mid] = task if isinstance(task, str) else None
    return out


def list_server_models(url: str, timeout_s: float = 5.0) -> dict[str, str | None]:
    """Model ids (and tasks, when given) a server lists; one clear line if unreachable."""
    try:
        resp = httpx.get(url.rstrip("/") + "/models", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach target {url}: {exc or type(exc).__name__}") from None
    if resp.status_code != 200:
        raise UsageError(f"target {url} answered {resp.status_code} to GET /models: pass --model-ids")
    try:
        return _parse_models_listing(resp.json())
    except json.JSONDecodeError:
        raise UsageError(f"target {url} answered GET /models with something that is not JSON") from None


def check_reachable(endpoint: Endpoint, timeout_s: float = 5.0) -> None:
    try:
        httpx.get(f"http://{endpoint.connect_host}:{endpoint.port}/ping", timeout=timeout_s,
                  headers={"Host": f"{endpoint.host}:{endpoint.port}"})
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach target {endpoint.url}: {exc or type(exc).__name__}") from None


def routes_from_target(url: str, model_ids: list[str] | None) -> Routes:
    ep = parse_base_url(url)
    if model_ids:
        check_reachable(ep)
        tasks: dict[str, str | None] = {m: None for m in model_ids}
        try:
            listed = list_server_models(url)
            tasks = {m: listed.get(m) for m in model_ids}
        except UsageError:
            pass
    else:
        tasks = list_server_models(url)
        if not tasks:
            raise UsageError(f"target {url} lists no models: trace some or pass --model-ids")
    return Routes({"target": ep}, {m: "target" for m in tasks}, tasks)


def routes_from_plan(path: Path, model_ids: list[str] | None, template: str | None = None,
                     host: str = "127.0.0.1", namespace: str = "shoal") -> Routes:
    """Build routes from plan.json; refuses routes to undefined servers and unknown ids."""
    from shoal.pack.plan_file import load_plan

    plan = load_plan(path)
    if not plan.routing:
        raise UsageError(f"plan {path} has an empty routing table: nothing to load-test")
    tmpl = template or LOCAL_TEMPLATE
    endpoints = {}
    for s in plan.servers:
        try:
            url = tmpl.format(name=s.name, port=s.port, host=host, namespace=namespace)
        except (KeyError, IndexError) as exc:
            raise UsageError(f"--base-url-template {tmpl!r}: unknown placeholder {exc}; "
                             "use {name}, {port}, {host}, {namespace}") from None
        endpoints[s.name] = parse_base_url(url)
    for model_id, server in plan.routing.items():
        if server not in endpoints:
            raise UsageError(f"plan {path} routes model {model_id!r} to server {server!r}, which it does not define")
    chosen = model_ids or list(plan.routing)
    for m in chosen:
        if m not in plan.routing:
            raise UsageError(f"model {m!r} is not in the routing table of plan {path}")
    return Routes(endpoints, {m: plan.routing[m] for m in chosen}, _plan_tasks(endpoints, plan.routing, chosen),
                  plan.cost_per_hour or None, sorted({i.type for i in plan.instances}))


def _plan_tasks(endpoints: dict[str, Endpoint], routing: dict[str, str], chosen: list[str]) -> dict[str, str | None]:
    """Each model's task as its server lists it, so a QA model gets question/context bodies.

    A plan carries no tasks; a server that cannot be asked leaves its models' tasks unknown (text bodies).
    """
    tasks: dict[str, str | None] = {m: None for m in chosen}
    wanted = {routing[m] for m in chosen}
    for name in wanted:
        ep = endpoints[name]
        try:
            listed = list_server_models(f"http://{ep.connect_host}:{ep.port}", timeout_s=2.0)
        except UsageError:
            continue
        for m in chosen:
            if routing[m] == name and listed.get(m):
                tasks[m] = listed[m]
    return tasks


class ModelChooser:
    """random | sequential | zipf:S over a fixed list of model ids.

    Zipf ranks follow the listed order shuffled with the seed, so "popular" models
    are not always the alphabetically first ones.
    """

    def __init__(self, spec: str, models: list[str], seed: int = 0, offset: int = 0) -> None:
        if not models:
            raise UsageError("no models to choose from")
        self.models = list(models)
        self.rng = random.Random(seed)
        self.spec = spec
        if spec == "random":
            self.next = self._random
        elif spec == "sequential":
            self._cycle = itertools.islice(itertools.cycle(self.models), offset % len(self.models), None)
            self.next = self._sequential
        elif spec.startswith("zipf:") or spec == "zipf":
            s = parse_zipf(spec)
            order = list(self.models)
            random.Random(12345).shuffle(order)
            self.models = order
            weights = [1.0 / (k ** s) for k in range(1, len(order) + 1)]
            self._cum = list(itertools.accumulate(weights))
            self.next = self._zipf
        else:
            raise UsageError(f"--models {spec!r}: use random, sequential or zipf:S (e.g. zipf:1.1)")

    def _random(self) -> str:
        return self.models[int(self.rng.random() * len(self.models))]

    def _sequential(self) -> str:
        return next(self._cycle)

    def _zipf(self) -> str:
        x = self.rng.random() * self._cum[-1]
        return self.models[min(bisect.bisect_left(self._cum, x), len(self.models) - 1)]


def parse_zipf(spec: str) -> float:
    try:
        s = float(spec.split(":", 1)[1]) if ":" in spec else 1.1
    except ValueError:
        raise UsageError(f"--models {spec!r}: the Zipf exponent must be a number, e.g. zipf:1.1") from None
    if s <= 0:
        raise UsageError(f"--models {spec!r}: the Zipf exponent must be positive")
    return s
