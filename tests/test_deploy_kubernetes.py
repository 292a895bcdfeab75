"""Kubernetes rendering of CPU, time-sliced GPU and Inferentia fleets, validated strictly against 1.33."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from shoal.deploy.kubernetes.manifests import render
from shoal.deploy.kubernetes.autoscale import METRIC, adapter_values
from shoal.deploy.kubernetes.options import KubeOptions
from shoal.deploy.kubernetes.output import dump, dump_all
from shoal.deploy.kubernetes.sample import sample_plan
from shoal.pack.plan_file import Plan, ServerPlan

K8S = "1.33.0"
REPO = Path(__file__).resolve().parent.parent
STORE = "s3://models/store"


def validate_crd(doc: dict) -> None:
    """kubernetes-validate has no schemas for CRDs: check the ServiceMonitor's shape ourselves."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "ServiceMonitor"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    spec = doc["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert spec["selector"]["matchLabels"] and spec["namespaceSelector"]["matchNames"]
    for ep in spec["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout"} and ep["path"].startswith("/")


def validate_all(docs: list[dict]) -> None:
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            validate_crd(doc)
            continue
        try:
            kubernetes_validate.validate(doc, K8S, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")


def by_kind(docs: list[dict], kind: str, namespace: str | None = "shoal") -> list[dict]:
    """Objects of ``kind`` in the plan's namespace (None: anywhere, e.g. kube-system add-ons)."""
    return [d for d in docs if d["kind"] == kind
            and (namespace is None or d["metadata"].get("namespace", namespace) == namespace)]


def container(deploy: dict) -> dict:
    return deploy["spec"]["template"]["spec"]["containers"][0]


FLEETS = {"cpu": 60, "gpu": 50, "inf1": 60, "inf2": 100}


@pytest.fixture(scope="module", params=sorted(FLEETS))
def fleet(request: pytest.FixtureRequest) -> tuple[str, Plan, list[dict]]:
    name = request.param
    plan = sample_plan(name, FLEETS[name])
    rendered = render(plan, KubeOptions(store=STORE, ingress=True, service_monitor=True, gpu_slices=8))
    return name, plan, rendered.documents()


def test_every_object_validates_strictly(fleet: tuple[str, Plan, list[dict]]) -> None:
    _, plan, docs = fleet
    validate_all(docs)
    n = len(plan.servers)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress"):
        assert len(by_kind(docs, kind)) == n, kind
    assert len(by_kind(docs, "Namespace")) == 1 and len(by_kind(docs, "ServiceMonitor")) == 1


def test_deployment_places_and_probes_each_server(fleet: tuple[str, Plan, list[dict]]) -> None:
    _, plan, docs = fleet
    for server, deploy in zip(plan.servers, by_kind(docs, "Deployment")):
        spec = deploy["spec"]["template"]["spec"]
        c = container(deploy)
        assert deploy["metadata"]["name"] == server.name and "replicas" not in deploy["spec"]
        assert spec["nodeSelector"]["node.kubernetes.io/instance-type"] == server.instance_type
        assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert c["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
        assert {t["topologyKey"] for t in spec["topologySpreadConstraints"]} == {
            "topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        assert c["image"] == f"shoal-{server.processor}:0.1.0"
        assert {"cpu", "memory"} <= set(c["resources"]["requests"])
        command = " ".join(c["command"] + c["args"])
        assert f"--server {server.name}" in command and "--plan /etc/shoal/plan.json" in command
        assert "--port 8080" in command
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["SHOAL_STORE"] == STORE and env["SHOAL_HOST"] == "0.0.0.0"
        assert spec["enableServiceLinks"] is False


def test_each_server_mounts_a_plan_with_only_itself(fleet: tuple[str, Plan, list[dict]]) -> None:
    _, plan, docs = fleet
    configs = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    for server in plan.servers:
        sub = Plan.model_validate_json(configs[f"{server.name}-plan"]["data"]["plan.json"])
        assert [s.name for s in sub.servers] == [server.name]
        assert sub.servers[0].models == server.models
        assert set(sub.routing) == set(server.models) and sub.store == plan.store


def test_routing_table_maps_every_model_to_a_stable_service_name(fleet: tuple[str, Plan, list[dict]]) -> None:
    _, plan, docs = fleet
    routing = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "shoal-routing")
    table = json.loads(routing["data"]["routing.json"])
    assert set(table) == set(plan.routing)
    for model, server in plan.routing.items():
        assert table[model] == f"http://{server}.shoal.svc.cluster.local:8080"
    services = {s["metadata"]["name"] for s in by_kind(docs, "Service")}
    assert services == {s.name for s in plan.servers}
    paths = {p["path"] for ing in by_kind(docs, "Ingress") for p in ing["spec"]["rules"][0]["http"]["paths"]}
    assert {f"/predictions/{m}" for m in plan.routing} <= paths


def test_autoscaler_uses_the_utilization_metric_the_adapter_exposes(fleet: tuple[str, Plan, list[dict]]) -> None:
    _, _, docs = fleet
    rule = adapter_values(KubeOptions(store=STORE))["rules"]["custom"][0]
    assert rule["name"]["as"] == METRIC == "shoal_utilization"
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        metric = hpa["spec"]["metrics"][0]
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == METRIC
        assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "700m"}
        assert hpa["spec"]["minReplicas"] == 1 and hpa["spec"]["maxReplicas"] == 4
        behavior = hpa["spec"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] > behavior["scaleUp"]["stabilizationWindowSeconds"]
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        assert pdb["spec"]["maxUnavailable"] == 1


def test_cpu_fleet_requests_no_accelerator_and_runs_as_non_root() -> None:
    plan = sample_plan("cpu", 60)
    docs = render(plan, KubeOptions(store=STORE)).documents()
    for deploy in by_kind(docs, "Deployment"):
        c = container(deploy)
        assert set(c["resources"]["requests"]) == {"cpu", "memory", "ephemeral-storage"}
        assert c["args"][c["args"].index("--device") + 1] == "cpu"
        assert deploy["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert "tolerations" not in deploy["spec"]["template"]["spec"]
    assert not [d for d in docs if d["metadata"]["name"] in ("nvidia-device-plugin", "neuron-device-plugin")]


def test_gpu_fleet_is_time_sliced() -> None:
    plan = sample_plan("gpu", 50)
    docs = render(plan, KubeOptions(store=STORE, gpu_slices=8)).documents()
    for deploy in by_kind(docs, "Deployment"):
        c = container(deploy)
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert c["args"][c["args"].index("--device") + 1] == "cuda:0"
        assert deploy["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    config = next(d for d in docs if d["metadata"]["name"] == "nvidia-device-plugin-config")
    slicing = yaml.safe_load(config["data"]["config.yaml"])["sharing"]["timeSlicing"]
    assert slicing["resources"] == [{"name": "nvidia.com/gpu", "replicas": 8}]
    plugin = next(d for d in by_kind(docs, "DaemonSet", None) if d["metadata"]["name"] == "nvidia-device-plugin")
    terms = plugin["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == ["g4dn.xlarge"]


def test_inferentia_fleet_requests_neuroncores_and_reads_the_plugins_choice() -> None:
    plan = sample_plan("inf1", 60)
    docs = render(plan, KubeOptions(store=STORE)).documents()
    for deploy in by_kind(docs, "Deployment"):
        c = container(deploy)
        assert c["resources"]["limits"]["aws.amazon.com/neuroncore"] == "1"
        assert c["command"] == ["/bin/sh", "-c"]
        assert '--device "neuron:${NEURON_RT_VISIBLE_CORES:-0-0}"' in c["args"][0]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("DaemonSet", "neuron-device-plugin"), ("ClusterRole", "neuron-device-plugin"),
            ("ClusterRoleBinding", "neuron-device-plugin")} <= kinds


def test_whole_chip_neuron_resource() -> None:
    server = ServerPlan(name="big", instance="i0", instance_type="inf2.xlarge", processor="inf2",
                        device="neuron:0-1", models=["m1"], memory_bytes=1 << 30)
    plan = Plan(store=STORE, servers=[server], routing={"m1": "big"})
    docs = render(plan, KubeOptions(store=STORE, neuron_resource="device")).documents()
    validate_all(docs)
    c = container(by_kind(docs, "Deployment")[0])
    assert c["resources"]["limits"]["aws.amazon.com/neuron"] == "1"
    assert "0-1" in c["args"][0]


def test_node_local_dns_cache_binds_both_addresses() -> None:
    docs = render(sample_plan("cpu", 10), KubeOptions(store=STORE, cluster_dns_ip="172.20.0.10")).documents()
    corefile = next(d for d in docs if d["metadata"]["name"] == "node-local-dns" and d["kind"] == "ConfigMap")
    text = corefile["data"]["Corefile"]
    assert "bind 169.254.20.10 172.20.0.10" in text and "__PILLAR__CLUSTER__DNS__" in text
    daemon = next(d for d in by_kind(docs, "DaemonSet", None) if d["metadata"]["name"] == "node-local-dns")
    assert daemon["spec"]["template"]["spec"]["hostNetwork"] is True
    none = render(sample_plan("cpu", 10), KubeOptions(store=STORE, dns_cache=False)).documents()
    assert not [d for d in none if d["metadata"]["name"] == "node-local-dns"]


def test_a_server_rolls_only_when_its_own_plan_changes() -> None:
    plan = sample_plan("cpu", 40)
    before = {d["metadata"]["name"]: d for d in by_kind(render(plan, KubeOptions(store=STORE)).documents(),
                                                        "Deployment")}
    changed = plan.model_copy(deep=True)
    changed.servers[0].models.append("new-model")
    changed.routing["new-model"] = changed.servers[0].name
    changed.created_at = "later"
    after = {d["metadata"]["name"]: d for d in by_kind(render(changed, KubeOptions(store=STORE)).documents(),
                                                       "Deployment")}
    sha = lambda d: d["spec"]["template"]["metadata"]["annotations"]["shoal.dev/plan-sha256"]  # noqa: E731
    assert sha(before["shoal-0"]) != sha(after["shoal-0"])
    assert all(sha(before[n]) == sha(after[n]) for n in before if n != "shoal-0")


def test_operator_copies_in_deploy_match_the_renderer() -> None:
    """deploy/ holds the same add-on files the renderer writes with default options."""
    opts = KubeOptions(store=STORE)
    rendered = render(sample_plan("cpu", 10), opts)
    texts = rendered.texts()

    def body(path: Path) -> str:
        return "".join(ln for ln in path.read_text().splitlines(keepends=True) if not ln.startswith("#"))

    assert body(REPO / "deploy/addons/nodelocaldns.yaml") == texts["addons/nodelocaldns.yaml"]
    assert body(REPO / "deploy/prometheus-adapter/values.yaml") == dump(adapter_values(opts))
    assert texts["addons/nodelocaldns.yaml"] == dump_all(rendered.manifests["addons/nodelocaldns.yaml"])


def test_eks_node_groups_carry_the_taints_the_pods_tolerate() -> None:
    cluster = yaml.safe_load((REPO / "deploy/eks/cluster.yaml").read_text())
    groups = {g["instanceType"]: g for g in cluster["managedNodeGroups"]}
    for fleet, key in (("gpu", "nvidia.com/gpu"), ("inf1", "aws.amazon.com/neuron"), ("inf2", "aws.amazon.com/neuron")):
        plan = sample_plan(fleet, 10)
        deploy = by_kind(render(plan, KubeOptions(store=STORE)).documents(), "Deployment")[0]
        tolerated = {t["key"] for t in deploy["spec"]["template"]["spec"]["tolerations"]}
        group = groups[plan.servers[0].instance_type]
        assert {t["key"] for t in group["taints"]} <= tolerated == {key}
    assert "taints" not in groups["c5.2xlarge"]


def test_operator_choices_reach_the_objects() -> None:
    opts = KubeOptions(store=STORE, namespace="models-prod", registry="123456789012.dkr.ecr.us-east-1.amazonaws.com",
                       tag="v7", role_arn="arn:aws:iam::123456789012:role/shoal-read", min_replicas=2,
                       max_replicas=9, target_utilization=0.55, s3_endpoint_url="http://minio.storage:9000")
    docs = render(sample_plan("inf2", 100), opts).documents()
    validate_all(docs)
    sa = by_kind(docs, "ServiceAccount", "models-prod")[0]
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == opts.role_arn
    c = container(by_kind(docs, "Deployment", "models-prod")[0])
    assert c["image"] == "123456789012.dkr.ecr.us-east-1.amazonaws.com/shoal-inf2:v7"
    assert {"name": "SHOAL_S3_ENDPOINT_URL", "value": "http://minio.storage:9000"} in c["env"]
    hpa = by_kind(docs, "HorizontalPodAutoscaler", "models-prod")[0]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 9)
    assert hpa["metrics"][0]["pods"]["target"]["averageValue"] == "550m"
    routing = by_kind(docs, "ConfigMap", "models-prod")[0]
    assert "http://shoal-0.models-prod.svc.cluster.local:8080" in routing["data"]["routing.json"]


def test_whole_gpu_servers_are_warned_about_time_slicing() -> None:
    servers = [ServerPlan(name=f"g{i}", instance="i0", instance_type="g5.12xlarge", processor="gpu",
                          device=f"cuda:{i}", models=[f"m{i}"], memory_bytes=1 << 30) for i in range(4)]
    plan = Plan(store=STORE, servers=servers, routing={f"m{i}": f"g{i}" for i in range(4)})
    assert "pass --gpu-slices 1" in render(plan, KubeOptions(store=STORE)).warnings[0]
    whole = render(plan, KubeOptions(store=STORE, gpu_slices=1))
    assert not whole.warnings
    config = next(d for d in whole.documents() if d["metadata"]["name"] == "nvidia-device-plugin-config")
    assert "sharing" not in yaml.safe_load(config["data"]["config.yaml"])
    assert not render(sample_plan("gpu", 20), KubeOptions(store=STORE)).warnings  # 8 servers share each GPU
