"""`shoal deploy kubernetes` as a user runs it: bad input gives one line and writes nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shoal.deploy.kubernetes.manifests import render
from shoal.deploy.kubernetes.options import KubeOptions
from shoal.deploy.kubernetes.output import MARKER, write_tree
from shoal.deploy.kubernetes.sample import sample_plan
from shoal.errors import UsageError
from shoal.pack.plan_file import Plan, ServerPlan

STORE = "s3://models/store"


def shoal(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHOAL_STATE_DIR": str(cwd / ".shoal")}
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode != 0, result.stdout
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def write_plan(path: Path, plan: Plan) -> Path:
    plan.save(path)
    return path


def test_renders_a_folder_kubectl_can_apply(tmp_path: Path) -> None:
    write_plan(tmp_path / "plan.json", sample_plan("inf1", 50))
    result = shoal("deploy", "kubernetes", "--plan", "plan.json", "-o", "k8s", "--ingress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rendered" in result.stdout and "kubectl apply -f k8s" in result.stdout
    out = tmp_path / "k8s"
    top = sorted(p.name for p in out.glob("*.yaml"))
    assert top == ["00-namespace.yaml", "01-routing.yaml", "10-server-shoal-0.yaml", "10-server-shoal-1.yaml",
                   "10-server-shoal-2.yaml"]
    assert sorted(p.name for p in (out / "addons").iterdir()) == ["neuron-device-plugin.yaml", "nodelocaldns.yaml"]
    kustomization = yaml.safe_load((out / "Kustomization").read_text())
    assert set(kustomization["resources"]) == {*top, "addons/neuron-device-plugin.yaml", "addons/nodelocaldns.yaml"}
    assert (out / "helm/prometheus-adapter-values.yaml").is_file()
    assert json.loads((out / MARKER).read_text())["namespace"] == "shoal"


def test_kustomize_overlay_in_deploy_builds_on_the_rendering(tmp_path: Path) -> None:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed")
    repo = Path(__file__).resolve().parent.parent
    shutil.copytree(repo / "deploy/kustomize/eks", tmp_path / "eks")
    write_tree(tmp_path / "rendered", render(sample_plan("gpu", 30), KubeOptions(store=STORE)).texts(), {})
    built = subprocess.run(["kubectl", "kustomize", str(tmp_path / "eks")], capture_output=True, text=True,
                           timeout=60)
    assert built.returncode == 0, built.stderr
    docs = list(yaml.safe_load_all(built.stdout))
    images = {d["spec"]["template"]["spec"]["containers"][0]["image"] for d in docs if d["kind"] == "Deployment"}
    assert images == {"123456789012.dkr.ecr.us-east-1.amazonaws.com/shoal-gpu:0.1.0"}
    assert {d["spec"]["maxReplicas"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"} == {8}


def test_apply_without_a_cluster_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed")
    write_plan(tmp_path / "plan.json", sample_plan("cpu", 10))
    env_kubeconfig = tmp_path / "kubeconfig"  # a cluster address nothing listens on
    env_kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
        "users": [{"name": "none", "user": {}}]}))
    monkeypatch.setenv("KUBECONFIG", str(env_kubeconfig))
    result = shoal("deploy", "kubernetes", "--plan", "plan.json", "-o", "k8s", "--apply", cwd=tmp_path)
    one_line_error(result, "no Kubernetes cluster answers kubectl", "nothing was applied")
    assert (tmp_path / "k8s/00-namespace.yaml").is_file()


@pytest.mark.parametrize("args, needle", [
    (["--namespace", "Bad_NS"], "not a DNS-1123 label"),
    (["--namespace", "-x"], "not a DNS-1123 label"),
    (["--store", "file://./store"], "pods cannot read"),
    (["--min-replicas", "5", "--max-replicas", "2"], "--min-replicas"),
    (["--cluster-dns-ip", "ten.0.0.1"], "not an IP address"),
    (["--neuron-resource", "chips"], "--neuron-resource"),
    (["--role-arn", "shoal-read"], "not an IAM role ARN"),
])
def test_bad_flags_write_nothing(tmp_path: Path, args: list[str], needle: str) -> None:
    write_plan(tmp_path / "plan.json", sample_plan("cpu", 10))
    one_line_error(shoal("deploy", "kubernetes", "--plan", "plan.json", "-o", "k8s", *args, cwd=tmp_path), needle)
    assert not (tmp_path / "k8s").exists()


def test_missing_and_malformed_plans(tmp_path: Path) -> None:
    one_line_error(shoal("deploy", "kubernetes", "--plan", "nope.json", cwd=tmp_path), "does not exist")
    (tmp_path / "bad.json").write_text('{"servers": 3}')
    one_line_error(shoal("deploy", "kubernetes", "--plan", "bad.json", cwd=tmp_path), "not a valid plan")
    write_plan(tmp_path / "tpu.json", _plan(_server(processor="tpu")))
    one_line_error(shoal("deploy", "kubernetes", "--plan", "tpu.json", "-o", "k8s", cwd=tmp_path),
                   "unknown processor 'tpu'")
    assert not (tmp_path / "k8s").exists()


def _server(**kw) -> ServerPlan:
    base = dict(name="s0", instance="i0", instance_type="c5.xlarge", processor="cpu", device="cpu",
                models=["m1"], memory_bytes=1 << 30)
    return ServerPlan(**{**base, **kw})


def _plan(*servers: ServerPlan) -> Plan:
    return Plan(store=STORE, servers=list(servers), routing={m: s.name for s in servers for m in s.models})


@pytest.mark.parametrize("plan, needle", [
    (_plan(_server(processor="tpu")), "unknown processor 'tpu'"),
    (_plan(_server(instance_type="c9.huge")), "unknown instance type 'c9.huge'"),
    (_plan(_server(instance_type="local")), "means this machine"),
    (_plan(_server(processor="gpu", device="cuda:0")), "cannot run on c5.xlarge"),
    (_plan(_server(instance_type="g4dn.xlarge", processor="gpu", device="cuda:1")), "exceeds its instance"),
    (_plan(_server(instance_type="inf1.xlarge", processor="inf1", device="neuron:2-5")), "exceeds its instance"),
    (_plan(_server(instance_type="inf1.xlarge", processor="inf1", device="neuron:0-1"),
           _server(name="s1", instance_type="inf1.xlarge", processor="inf1", device="neuron:1-1", models=["m2"])),
     "both use NeuronCore 1"),
    (_plan(_server(memory_bytes=9 << 30)), "need 9.0 GiB of memory but c5.xlarge has 8.0 GiB"),
    (_plan(*[_server(name=f"s{i}", models=[f"m{i}"], memory_bytes=0) for i in range(3)]), "only 2 CPU slots"),
    (_plan(*[_server(name=f"s{i}", models=[f"m{i}"], instance_type="g4dn.xlarge", processor="gpu",
                     device="cuda:0", memory_bytes=6 << 30) for i in range(3)]), "need 18.0 GiB"),
    (_plan(_server(instance_type="inf1.xlarge", processor="inf1", device="neuron:0-0", memory_bytes=3 << 30)),
     "device memory"),
    (_plan(_server(name="Server_1")), "not a DNS-1123 label"),
    (_plan(_server(device="cuda:0")), "does not match processor cpu"),
    (_plan(_server(), _server(name="s1", instance_type="c5.2xlarge", models=["m2"])), "named with two types"),
    (Plan(store=STORE), "no servers"),
    (Plan(store=STORE, servers=[_server()], routing={"m1": "ghost"}), "does not have"),
])
def test_plans_that_cannot_run_are_refused(plan: Plan, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        render(plan, KubeOptions(store=STORE))
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_gpu_servers_beyond_the_time_slices_are_refused() -> None:
    plan = sample_plan("gpu", 80)  # 8 servers share GPU 0 of each g4dn.xlarge
    with pytest.raises(UsageError, match="more than the 4 time slices"):
        render(plan, KubeOptions(store=STORE, gpu_slices=4))


def test_output_folder_is_replaced_whole_and_foreign_folders_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    write_tree(out, render(sample_plan("cpu", 60), KubeOptions(store=STORE)).texts(), {})
    assert (out / "10-server-shoal-5.yaml").is_file()
    write_tree(out, render(sample_plan("cpu", 20), KubeOptions(store=STORE)).texts(), {})
    assert not (out / "10-server-shoal-5.yaml").exists(), "a removed server's file must not survive"
    assert (out / "10-server-shoal-1.yaml").is_file()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="was not written by shoal deploy"):
        write_tree(foreign, {"a.yaml": "x: 1\n"}, {})
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k8s", "mine"], "no staging folder left behind"
