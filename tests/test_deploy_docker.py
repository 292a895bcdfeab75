"""Docker runtime: the `docker run` per server, one clear line without an engine, and the recipes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.deploy.docker import DockerOptions, build_images, engine_problem, run_commands
from shoal.deploy.kubernetes.sample import sample_plan
from shoal.errors import UsageError
from shoal.pack.plan_file import Plan, ServerPlan

REPO = Path(__file__).resolve().parent.parent
STORE = "s3://models/store"


def opts(tmp_path: Path, **kw) -> DockerOptions:
    return DockerOptions(**{"store": STORE, "state_dir": tmp_path / ".shoal", **kw})


def argv_of(commands, name: str) -> list[str]:
    return next(c.argv for c in commands if c.name == name)


def value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def plan_of(*servers: ServerPlan) -> Plan:
    return Plan(store=STORE, servers=list(servers), routing={m: s.name for s in servers for m in s.models})


def server(name: str, instance_type: str, processor: str, device: str, port: int, instance: str = "i0") -> ServerPlan:
    return ServerPlan(name=name, instance=instance, instance_type=instance_type, processor=processor,
                      device=device, port=port, models=[f"{name}-model"], memory_bytes=1 << 28)


def test_one_container_per_server_publishing_the_plan_port(tmp_path: Path) -> None:
    plan = sample_plan("cpu", 30)
    commands = run_commands(plan, tmp_path / "plan.json", opts(tmp_path))
    assert [c.name for c in commands] == ["shoal-0", "shoal-1", "shoal-2"]
    for s, c in zip(plan.servers, commands):
        argv = c.argv
        assert argv[:3] == ["docker", "run", "-d"] and value(argv, "-p") == f"127.0.0.1:{s.port}:8080"
        assert c.url == f"http://127.0.0.1:{s.port}"
        assert value(argv, "-v") == f"{(tmp_path / 'plan.json').resolve()}:/etc/shoal/plan.json:ro"
        tail = argv[argv.index("shoal-cpu:0.1.0"):]
        assert tail == ["shoal-cpu:0.1.0", "serve", "--store", STORE, "--plan", "/etc/shoal/plan.json",
                        "--server", s.name, "--device", "cpu", "--port", "8080"]
        assert "--gpus" not in argv and "--device" not in argv[:argv.index("shoal-cpu:0.1.0")]


def test_gpu_servers_get_their_gpu_and_see_it_as_cuda0(tmp_path: Path) -> None:
    plan = plan_of(server("a", "g5.12xlarge", "gpu", "cuda:3", 8080), server("b", "g5.12xlarge", "gpu", "cuda:0", 8081))
    commands = run_commands(plan, tmp_path / "plan.json", opts(tmp_path, registry="reg.example/team", tag="v1"))
    a = argv_of(commands, "shoal-a")
    assert value(a, "--gpus") == "device=3" and a[-3] == "cuda:0"
    assert "reg.example/team/shoal-gpu:v1" in a


def test_inferentia_servers_get_their_chips_and_a_renumbered_core_range(tmp_path: Path) -> None:
    plan = plan_of(server("a", "inf1.6xlarge", "inf1", "neuron:5-5", 8080),
                   server("b", "inf1.6xlarge", "inf1", "neuron:2-5", 8081, instance="i1"),
                   server("c", "inf2.24xlarge", "inf2", "neuron:6-7", 8082, instance="i2"))
    commands = run_commands(plan, tmp_path / "plan.json", opts(tmp_path))
    a, b, c = (argv_of(commands, f"shoal-{n}") for n in "abc")
    devices = lambda argv: [argv[i + 1] for i, x in enumerate(argv) if x == "--device"][:-1]  # noqa: E731
    assert devices(a) == ["/dev/neuron1"] and a[-3] == "neuron:1"
    assert devices(b) == ["/dev/neuron0", "/dev/neuron1"] and b[-3] == "neuron:2-5"
    assert devices(c) == ["/dev/neuron3"] and c[-3] == "neuron:0-1"


def test_local_plans_and_cpu_slices(tmp_path: Path) -> None:
    plan = plan_of(server("a", "local", "cpu", "cpu:0-0", 8090), server("b", "local", "cpu", "cpu:1-1", 8091))
    commands = run_commands(plan, tmp_path / "plan.json", opts(tmp_path, network="host"))
    a = argv_of(commands, "shoal-a")
    assert value(a, "--cpuset-cpus") == "0-0" and a[-3] == "cpu:0"
    assert "-p" not in a and value(a, "--network") == "host" and a[-1] == "8090"


def test_a_local_store_is_mounted_read_only(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    commands = run_commands(sample_plan("cpu", 5), tmp_path / "plan.json",
                            opts(tmp_path, store=f"file://{tmp_path / 'store'}"))
    argv = commands[0].argv
    mounts = [argv[i + 1] for i, x in enumerate(argv) if x == "-v"]
    assert f"{(tmp_path / 'store').resolve()}:/store:ro" in mounts
    assert value(argv, "--store") == "file:///store"
    with pytest.raises(UsageError, match="does not exist"):
        run_commands(sample_plan("cpu", 5), tmp_path / "plan.json", opts(tmp_path, store="file://./missing"))


def test_credentials_are_passed_by_name_never_by_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    argv = run_commands(sample_plan("cpu", 5), tmp_path / "plan.json",
                        opts(tmp_path, s3_endpoint_url="http://minio:9000"))[0].argv
    assert "s3cr3t-value" not in " ".join(argv) and "AKIDEXAMPLE" not in " ".join(argv)
    envs = [argv[i + 1] for i, x in enumerate(argv) if x == "-e"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SHOAL_S3_ENDPOINT_URL=http://minio:9000"} <= set(envs)


def test_bad_plans_and_flags(tmp_path: Path) -> None:
    clash = plan_of(server("a", "c5.xlarge", "cpu", "cpu", 8080), server("b", "c5.xlarge", "cpu", "cpu", 8080))
    with pytest.raises(UsageError, match="share host port 8080"):
        run_commands(clash, tmp_path / "plan.json", opts(tmp_path))
    with pytest.raises(UsageError, match="no server on instance 'nope'"):
        run_commands(sample_plan("cpu", 5), tmp_path / "plan.json", opts(tmp_path, instance="nope"))
    with pytest.raises(UsageError, match="unknown processor 'tpu'"):
        run_commands(plan_of(server("a", "c5.xlarge", "tpu", "cpu", 8080)), tmp_path / "plan.json", opts(tmp_path))
    with pytest.raises(UsageError, match="unknown processor 'tpu'"):
        build_images(["tpu"])
    only = run_commands(sample_plan("inf1", 400), tmp_path / "plan.json", opts(tmp_path, instance="inf1-6xlarge-1"))
    assert [c.name for c in only] == ["shoal-16", "shoal-17", "shoal-18", "shoal-19"]


def shoal(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHOAL_STATE_DIR": str(cwd / ".shoal")}
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def no_engine() -> None:
    if engine_problem() is None:
        pytest.skip("a Docker engine is running here: these tests cover the machine without one")


def test_without_an_engine_deploy_is_one_line_and_runs_nothing(tmp_path: Path, no_engine: None) -> None:
    sample_plan("gpu", 20).save(tmp_path / "plan.json")
    result = shoal("deploy", "docker", "--plan", "plan.json", cwd=tmp_path)
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot deploy with Docker:"), result.stderr
    assert not (tmp_path / ".shoal/docker").exists()
    down = shoal("deploy", "docker", "--down", cwd=tmp_path)
    assert down.returncode != 0 and "cannot stop Docker servers" in down.stderr


def test_dry_run_needs_no_engine(tmp_path: Path) -> None:
    sample_plan("inf2", 100).save(tmp_path / "plan.json")
    result = shoal("deploy", "docker", "--plan", "plan.json", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(ln.startswith("docker run -d --name shoal-") for ln in lines)
    assert "--device /dev/neuron0" in lines[0] and "shoal-inf2:0.1.0" in lines[0]


def test_building_images_without_an_engine_skips_with_one_line(tmp_path: Path, no_engine: None) -> None:
    result = shoal("deploy", "images", "--processor", "cpu", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("container images: skipped,") and len(result.stdout.splitlines()) == 1
    assert build_images(["cpu", "gpu"], log=lambda line: None) is False
