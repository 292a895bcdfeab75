"""Which processes a local deployment runs: ports, devices, pinning, commands, and bad input."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from shoal.config import Settings
from shoal.deploy.local.control import StartOptions, build_fleet, port_in_use
from shoal.deploy.local.fleet import plan_fleet, workers_fleet
from shoal.deploy.local.state import FleetPaths
from shoal.errors import UsageError
from shoal.pack.plan_file import InstancePlan, Plan, ServerPlan
from shoal.store.manifest import Manifest


def make_plan(devices: list[str], ports: list[int] | None = None, processor: str = "cpu") -> Plan:
    servers = [ServerPlan(name=f"shoal-{i}", instance="i-0", instance_type="c6i.xlarge", processor=processor,
                          device=d, port=(ports[i] if ports else 8080), models=[f"m{i}a", f"m{i}b"])
               for i, d in enumerate(devices)]
    return Plan(instances=[InstancePlan(name="i-0", type="c6i.xlarge", price_per_hour=0.17)], servers=servers,
                routing={m: s.name for s in servers for m in s.models})


def test_workers_split_the_cores_on_consecutive_ports() -> None:
    fleet = workers_fleet("file:///s", "127.0.0.1", 9000, 2, cores=4)
    assert [s.port for s in fleet.servers] == [9000, 9001]
    assert [s.device for s in fleet.servers] == ["cpu:0-1", "cpu:2-3"]
    assert [s.cores for s in fleet.servers] == [[0, 1], [2, 3]]
    assert fleet.servers[0].env["OMP_NUM_THREADS"] == "2"
    assert fleet.servers[1].env["SHOAL_DEVICE"] == "cpu:2-3"
    argv = fleet.servers[1].argv
    assert argv[1:4] == ["-m", "shoal.cli", "serve"]
    assert argv[argv.index("--port") + 1] == "9001" and argv[argv.index("--device") + 1] == "cpu:2-3"
    assert "--models" not in argv  # every model in the store


def test_grpc_ports_follow_like_http_ports(tmp_path: Path) -> None:
    fleet = workers_fleet("file:///s", "0.0.0.0", 9000, 2, cores=4, grpc_port=9100)
    assert [s.grpc_port for s in fleet.servers] == [9100, 9101]
    assert [s.grpc_address for s in fleet.servers] == ["127.0.0.1:9100", "127.0.0.1:9101"]
    argv = fleet.servers[1].argv
    assert argv[argv.index("--grpc-port") + 1] == "9101"
    assert "--grpc-port" not in workers_fleet("file:///s", "127.0.0.1", 9000, 1, cores=2).servers[0].argv
    with pytest.raises(UsageError, match="overlap"):
        workers_fleet("file:///s", "127.0.0.1", 9000, 2, cores=4, grpc_port=9001)
    with pytest.raises(UsageError, match="--grpc-port 65535"):
        workers_fleet("file:///s", "127.0.0.1", 9000, 2, cores=4, grpc_port=65535)
    plan = make_plan(["cpu:0", "cpu:1"], ports=[7001, 7005])
    fleet, _ = plan_fleet(plan, tmp_path / "p.json", "file:///s", "127.0.0.1", None, False, cores=2, grpc_port=7100)
    assert [s.grpc_port for s in fleet.servers] == [7100, 7101]


def test_one_worker_uses_the_whole_machine() -> None:
    (server,) = workers_fleet("file:///s", "127.0.0.1", 8080, 1, cores=2).servers
    assert server.device == "cpu" and server.cores is None and server.env["OMP_NUM_THREADS"] == "2"


def test_too_many_workers_is_one_clear_error() -> None:
    with pytest.raises(UsageError, match="--workers 3"):
        workers_fleet("file:///s", "127.0.0.1", 8080, 3, cores=2)


def test_plan_keeps_distinct_ports_and_passes_plan_and_server(tmp_path: Path) -> None:
    plan = make_plan(["cpu:0", "cpu:1"], ports=[7001, 7005])
    fleet, effective = plan_fleet(plan, tmp_path / "plan.json", "file:///s", "127.0.0.1", None, False, cores=2)
    assert [s.port for s in fleet.servers] == [7001, 7005]
    assert [s.port for s in effective.servers] == [7001, 7005]
    argv = fleet.servers[1].argv
    assert argv[argv.index("--plan") + 1] == str(tmp_path / "plan.json")
    assert argv[argv.index("--server") + 1] == "shoal-1"
    assert fleet.servers[1].models == ["m1a", "m1b"] and fleet.servers[1].cores == [1]


def test_plan_with_clashing_ports_moves_them_and_says_so(tmp_path: Path) -> None:
    plan = make_plan(["cpu", "cpu", "cpu"])  # all 8080: fine on Kubernetes, not on one machine
    fleet, effective = plan_fleet(plan, tmp_path / "p.json", "file:///s", "127.0.0.1", None, False, cores=2)
    assert [s.port for s in fleet.servers] == [8080, 8081, 8082]
    assert [s.port for s in effective.servers] == [8080, 8081, 8082]
    assert effective.routing == plan.routing
    # Three whole-machine CPU servers share two cores: one thread each, not two each.
    assert {s.env["OMP_NUM_THREADS"] for s in fleet.servers} == {"1"}
    fleet, _ = plan_fleet(plan, tmp_path / "p.json", "file:///s", "127.0.0.1", 9100, False, cores=2)
    assert [s.port for s in fleet.servers] == [9100, 9101, 9102]


def test_accelerator_plan_needs_on_cpu_here(tmp_path: Path) -> None:
    plan = make_plan(["cuda:0", "cuda:1", "cuda:2"], processor="gpu")
    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UsageError, match="cuda:0.*--on-cpu"):
        plan_fleet(plan, tmp_path / "p.json", "file:///s", "127.0.0.1", None, False, cores=2)
    fleet, effective = plan_fleet(plan, tmp_path / "p.json", "file:///s", "127.0.0.1", None, True, cores=2)
    assert [s.device for s in fleet.servers] == ["cpu:0", "cpu:1", "cpu:0"]
    assert [s.device for s in effective.servers] == ["cpu:0", "cpu:1", "cpu:0"]
    assert all(s.env["CUDA_VISIBLE_DEVICES"] == "" for s in fleet.servers)


def _store_with(root: Path, ids: list[str]) -> str:
    for i in ids:
        (root / i).mkdir(parents=True)
        (root / i / "shoal.json").write_text(Manifest(id=i, kind="text", task="classification").model_dump_json())
    return f"file://{root}"


def test_empty_store_and_missing_models_are_one_clear_error(tmp_path: Path) -> None:
    paths = FleetPaths.under(tmp_path / ".shoal")
    settings = Settings(store=f"file://{tmp_path / 'empty'}", state_dir=tmp_path / ".shoal")
    with pytest.raises(UsageError, match="holds no models: run ./build.sh"):
        build_fleet(settings, StartOptions(), paths)
    settings = Settings(store=_store_with(tmp_path / "store", ["m0a", "m0b", "m1a"]), state_dir=tmp_path / ".shoal")
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(make_plan(["cpu:0", "cpu:1"], ports=[7001, 7002]).model_dump_json())
    with pytest.raises(UsageError, match="1 model\\(s\\) to serve are not in the store .*: m1b"):
        build_fleet(settings, StartOptions(plan=plan_file), paths)
    with pytest.raises(UsageError, match="not in the store"):
        build_fleet(settings, StartOptions(models=["m0a", "nope"]), paths)
    built = build_fleet(settings, StartOptions(workers=1, port=9000), paths)
    assert built.fleet.store == f"file://{tmp_path / 'store'}"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"servers": "no"}))
    with pytest.raises(UsageError, match="not a valid plan"):
        build_fleet(settings, StartOptions(plan=bad), paths)


def test_port_in_use_sees_listeners_only() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.listen()
        assert port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", port)


def test_wildcard_bind_is_reached_on_loopback() -> None:
    fleet = workers_fleet("file:///s", "0.0.0.0", 8080, 1, cores=2)
    assert fleet.servers[0].url == "http://127.0.0.1:8080"
    assert fleet.servers[0].argv[-2:] == ["--host", "0.0.0.0"]
    assert workers_fleet("file:///s", "::1", 8080, 1, cores=2).servers[0].url == "http://[::1]:8080"
