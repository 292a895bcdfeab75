"""`shoal pack` as a user runs it: a real process against a temporary store."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.pack.plan_file import load_plan
from shoal.store.local import LocalStore
from tests.pack_support import manifest, push

SHOAL = str(Path(sys.executable).parent / "shoal")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def run_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed console script in a fresh process (as a user runs it)."""
    return subprocess.run([SHOAL, "pack", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "160", "HOME": str(cwd)})


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """The same entry point (``shoal.cli.main``) in this process: fast enough for many cases."""
    from shoal.cli import main

    def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["shoal", "pack", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return _run


@pytest.fixture
def six_models(tmp_path: Path) -> Path:
    """A store with six small models (dummy artifacts: pack reads only the manifests)."""
    store = LocalStore(tmp_path / "store")
    for i, (mib, ms) in enumerate([(90, 12), (130, 60), (480, 170), (80, 11), (300, 40), (200, 25)]):
        push(store, tmp_path, manifest(f"model-{i}", resident_mib=mib, b1_ms=ms))
    return tmp_path


def test_local_plan_with_three_servers(six_models: Path) -> None:
    r = run_process("--store", "file://store", "--instances", "local", "--servers", "3", "-o", "plan.json", cwd=six_models)
    assert r.returncode == 0, r.stderr
    assert "models per instance" in r.stdout and "$/model-hour" in r.stdout
    plan = load_plan(six_models / "plan.json")
    assert plan.store == "file://store"
    assert [s.port for s in plan.servers] == [8080, 8081, 8082]
    assert {s.device for s in plan.servers} == {"cpu"} and {s.processor for s in plan.servers} == {"cpu"}
    assert sorted(plan.routing) == [f"model-{i}" for i in range(6)]
    for s in plan.servers:
        assert DNS_1035.match(s.name) and s.threads is not None and s.threads >= 1
        assert all(plan.routing[m] == s.name for m in s.models)
    assert plan.cost_per_hour == 0 and plan.solver is not None and plan.solver.gap == 0
    assert plan.rps == {f"model-{i}": 1.0 for i in range(6)}


def test_cloud_plan_for_some_models_and_a_manifest_file(six_models: Path, run) -> None:  # noqa: ANN001
    listing = subprocess.run([SHOAL, "models", "list", "--json", "--store", "file://store"], cwd=six_models,
                             capture_output=True, text=True, check=True).stdout
    (six_models / "two.json").write_text(json.dumps(json.loads(listing)[:2]))
    r = run("--store", "file://store", "--models", "model-2,model-3,two.json", "--instances",
            "inf1.xlarge,g4dn.xlarge,c5.xlarge", "--rps-per-model", "2", "-o", "out/plan.json", cwd=six_models)
    assert r.returncode == 0, r.stderr
    plan = load_plan(six_models / "out" / "plan.json")
    assert sorted(plan.routing) == ["model-0", "model-1", "model-2", "model-3"]
    assert plan.cost_per_hour == pytest.approx(sum(i.price_per_hour for i in plan.instances))
    assert plan.price_per_model_hour == pytest.approx(plan.cost_per_hour / 4)
    for row in ("inf1.xlarge", "g4dn.xlarge", "c5.xlarge", "plan:"):
        assert row in r.stdout


def test_synthetic_profiles_reproduce_the_benchmark_command(tmp_path: Path, run) -> None:  # noqa: ANN001
    r = run("--synthetic", "300", "--seed", "1", "--instances", "inf1.6xlarge,g4dn.xlarge,g4dn.12xlarge",
            "-o", "plan.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"lower bound \$[\d.]+/h; (gap [\d.]+%|optimal)", r.stdout)
    plan = load_plan(tmp_path / "plan.json")
    assert len(plan.routing) == 300 and plan.store == "synthetic"


def test_replan_keeps_placements_and_counts_moves(six_models: Path, run) -> None:  # noqa: ANN001
    assert run("--store", "file://store", "--instances", "inf1.xlarge", "-o", "a.json", cwd=six_models).returncode == 0
    store = LocalStore(six_models / "store")
    store.remove("model-5")
    push(store, six_models, manifest("model-9", resident_mib=150, b1_ms=20))
    r = run("--store", "file://store", "--instances", "inf1.xlarge", "--previous", "a.json", "-o", "b.json",
            cwd=six_models)
    assert r.returncode == 0, r.stderr
    before, after = load_plan(six_models / "a.json"), load_plan(six_models / "b.json")
    assert "re-plan: 0 models moved, 1 added, 1 removed" in r.stdout
    assert all(after.routing[m] == s for m, s in before.routing.items() if m != "model-5")
    assert after.solver is not None and after.solver.moved_models == 0


@pytest.mark.parametrize("args,message", [
    (["--instances", "p9.huge"], "unknown instance type 'p9.huge'"),
    (["--instances", "local", "--max-memory", "1.5"], "--max-memory 1.5: must be a fraction"),
    (["--synthetic", "5", "--models", "model-0"], "either --models or --synthetic"),
    (["--models", "nope"], "model 'nope' is not in"),
    (["--models", "../etc"], "invalid model id"),
    (["--batch-size", "big"], "--batch-size 'big'"),
    (["--models", "missing.json"], "missing.json does not exist"),
    (["--catalog", "bad.yaml"], "catalog file bad.yaml is malformed"),
    (["--previous", "nowhere.json"], "plan file nowhere.json does not exist"),
    (["--instances", "inf1.xlarge", "--rps-per-model", "1000"], "at 1000 req/s keeps"),
])
def test_bad_input_is_one_line(six_models: Path, args: list[str], message: str, run) -> None:  # noqa: ANN001
    (six_models / "bad.yaml").write_text("accelerators: {}\n")
    r = run("--store", "file://store", *args, cwd=six_models)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert message in " ".join(lines), r.stderr


def test_empty_store_and_oversized_models(tmp_path: Path, run) -> None:  # noqa: ANN001
    r = run_process("--store", "file://store", cwd=tmp_path)
    assert r.returncode != 0 and "no models to pack: the store file://store is empty" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    store = LocalStore(tmp_path / "store")
    push(store, tmp_path, manifest("giant", resident_mib=64 * 1024))
    r = run("--store", "file://store", "--instances", "inf1.6xlarge,g4dn.12xlarge", cwd=tmp_path)
    assert r.returncode != 0
    assert "model giant needs 64.00 GiB but the largest device, t4 on g4dn.12xlarge" in r.stderr


def test_models_that_overflow_this_machine_name_the_limit(tmp_path: Path, run) -> None:  # noqa: ANN001
    """Each fits alone, together they exceed local's memory: the error names memory."""
    from shoal.pack.catalog import machine_ram_bytes

    store = LocalStore(tmp_path / "store")
    third = machine_ram_bytes() * 0.4 / 2**20
    for i in range(3):
        push(store, tmp_path, manifest(f"big-{i}", resident_mib=third))
    r = run("--store", "file://store", "--instances", "local", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "tightest constraint: memory" in r.stderr
