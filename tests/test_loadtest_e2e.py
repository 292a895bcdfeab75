"""`shoal loadtest` end to end: the CLI as a subprocess against a real `shoal serve` on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from shoal.loadtest.served import ServerProcess
from shoal.pack.plan_file import InstancePlan, Plan, ServerPlan
from shoal.store.local import LocalStore
from shoal.trace.synth import synth_models
from shoal.trace.tiny import make_tiny_model

MODELS: list[str] = []


def shared_tiny_store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    """tiny-cls (fp32), tiny-cls-bf16 and one synthesised copy, traced once per test session.

    Both the load-test and the sweep tests use it; tracing is most of their set-up time.
    """
    root = tmp_path_factory.getbasetemp() / "loadtest-tiny"
    store = LocalStore(root / "store")
    if not (root / "done").exists():
        make_tiny_model(store, "tiny-cls", build_dir=root / "build")
        make_tiny_model(store, "tiny-cls-bf16", precision="bf16", build_dir=root / "build")
        synth_models(store, "tiny-cls", 1, prefix="tiny-copy", build_dir=root / "build")  # milliseconds
        (root / "done").touch()
    return store


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = shared_tiny_store(tmp_path_factory)
    MODELS[:] = [m for m in store.list_ids() if m != "tiny-cls-bf16"]
    assert len(MODELS) == 2
    log = tmp_path_factory.mktemp("loadtest") / "serve.log"
    with ServerProcess(store.uri, log, {"preload": "all"}, models=MODELS) as srv:
        yield srv


def shoal(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal.cli", "loadtest", *args, "--no-progress"],
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_closed_loop_pooled_report_and_json(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    proc = shoal("--target", server.url, "--clients", "8", "--duration", "1.5s", "--warmup", "0.3s",
                 "--ceiling-seconds", "0.6", "--price-per-hour", "0.17", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "p95 ms" in proc.stdout and "generator ceiling" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["mode"] == "closed" and doc["clients"] == 8 and doc["models"] == 2
    assert doc["ok"] > 10 and doc["errors"] == 0 and doc["passed"] is True
    lat = doc["latency_ms"]
    assert set(lat) >= {"p50", "p90", "p95", "p99", "max"}
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert sum(m["ok"] for m in doc["per_model"].values()) == doc["ok"]
    assert set(doc["per_model"]) == set(MODELS)
    assert doc["latency_histogram"]["total"] == doc["ok"]  # every sample pooled into one histogram
    assert doc["throughput_rps"] > 0 and doc["generator_ceiling"]["rps"] > 3 * doc["throughput_rps"]
    assert doc["cost"]["usd_per_million"] == pytest.approx(0.17 / (doc["throughput_rps"] * 3600) * 1e6, rel=1e-3)
    assert doc["machine"]["nproc"] >= 1


def test_open_loop_poisson_and_sequential_models(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "open.json"
    proc = shoal("--target", server.url, "--rate", "40", "--duration", "2s", "--models", "sequential",
                 "--ceiling", "off", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["mode"] == "open" and doc["rate_rps"] == [40.0]
    assert 40 <= doc["requests"] <= 130  # Poisson(80) within a wide margin
    counts = [m["ok"] for m in doc["per_model"].values()]
    assert max(counts) - min(counts) <= 1  # sequential alternates


def test_burst_stages_report_each_window(server: ServerProcess, tmp_path: Path) -> None:
    scenario = tmp_path / "burst.yaml"
    scenario.write_text("name: mini-burst\nstages:\n  - {rate: 10%, duration: 1s}\n"
                        "  - {rate: 150%, duration: 1s, max_error_rate: 1.0}\n")
    out = tmp_path / "burst.json"
    proc = shoal("--target", server.url, "--scenario", str(scenario), "--capacity", "40", "--ceiling", "off",
                 "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert [s["offered_rate_rps"] for s in doc["stages"]] == [4.0, 60.0]
    assert [s["error_rate_limit"] for s in doc["stages"]] == [None, 1.0]
    assert doc["scenario"] == "mini-burst" and doc["failed_windows"] == []
    assert sum(s["requests"] for s in doc["stages"]) == doc["requests"]


def test_single_requests_per_model(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "single.json"
    proc = shoal("--target", server.url, "--single", "sequential", "--requests", "3", "--ceiling", "off",
                 "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["mode"] == "single" and doc["requests"] == 6
    assert {m: s["ok"] for m, s in doc["per_model"].items()} == {m: 3 for m in MODELS}


def test_errors_are_counted_by_kind_and_fail_the_run(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "err.json"
    args = ["--target", server.url, "--model-ids", "tiny-cls,no-such-model", "--single", "sequential",
            "--requests", "4", "--ceiling", "off", "--json", str(out)]
    proc = shoal(*args)
    assert proc.returncode == 1
    assert "exceeds --max-error-rate" in one_error_line(proc)
    doc = json.loads(out.read_text())
    assert doc["errors_by_kind"] == {"status_404": 4} and doc["ok"] == 4 and doc["passed"] is False
    assert doc["per_model"]["no-such-model"]["errors"] == 4
    assert "status_404" in proc.stdout  # the table shows them too
    tolerant = shoal(*args, "--max-error-rate", "0.6")
    assert tolerant.returncode == 0, tolerant.stderr
    assert json.loads(out.read_text())["errors"] == 4  # still reported, never dropped
    scenario = tmp_path / "stages.yaml"
    scenario.write_text("stages:\n  - {rate: 20, duration: 0.5s, max_error_rate: 1.0}\n  - {rate: 20, duration: 0.5s}\n")
    staged = shoal("--target", server.url, "--model-ids", "no-such-model", "--scenario", str(scenario),
                   "--ceiling", "off", "--json", str(out))
    assert staged.returncode == 1
    assert "error rate over the limit in 20 req/s: 100.00%" in one_error_line(staged)
    assert [w["limit"] for w in json.loads(out.read_text())["failed_windows"]] == [0.01]  # the 2nd window only


def test_plan_routing_with_dns_cache(server: ServerProcess, tmp_path: Path) -> None:
    plan = Plan(instances=[InstancePlan(name="i0", type="local", price_per_hour=0.0)],
                servers=[ServerPlan(name="shoal-0", instance="i0", instance_type="local", processor="cpu",
                                    device="cpu", port=server.port, models=MODELS)],
                routing={m: "shoal-0" for m in MODELS})
    path = tmp_path / "plan.json"
    plan.save(path)
    out = tmp_path / "plan-run.json"
    proc = shoal("--plan", str(path), "--base-url-template", "http://localhost:{port}", "--dns-cache",
                 "--requests", "30", "--clients", "3", "--ceiling", "off", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["requests"] == 30 and doc["ok"] == 30 and doc["targets"] == [f"http://localhost:{server.port}"]
    unknown = shoal("--plan", str(path), "--model-ids", "ghost", "--requests", "1", "--ceiling", "off")
    assert unknown.returncode == 2
    assert "'ghost' is not in the routing table" in one_error_line(unknown)


def test_bad_input_gives_one_line_and_non_zero_exit(server: ServerProcess, tmp_path: Path) -> None:
    unreachable = shoal("--target", "http://127.0.0.1:9", "--clients", "1", "--duration", "1s")
    assert unreachable.returncode == 2
    assert "cannot reach target http://127.0.0.1:9" in one_error_line(unreachable)
    bad = tmp_path / "bad.yaml"
    bad.write_text("clients: many\n")
    malformed = shoal("--target", server.url, "--scenario", str(bad))
    assert malformed.returncode == 2
    assert "scenario file" in one_error_line(malformed) and "malformed at clients" in malformed.stderr
    both = shoal("--target", server.url, "--clients", "2", "--rate", "5")
    assert both.returncode == 2 and "not both" in one_error_line(both)


def test_workers_pool_their_histograms_and_warn_when_client_bound(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "workers.json"
    proc = shoal("--target", server.url, "--clients", "4", "--workers", "2", "--duration", "1.5s",
                 "--ceiling", "20", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["workers"] == 2 and doc["latency_histogram"]["total"] == doc["ok"] > 0
    assert any("client-bound" in w for w in doc["warnings"])
    assert "client-bound" in proc.stdout


def test_self_test_measures_the_generator_ceiling(tmp_path: Path) -> None:
    out = tmp_path / "self.json"
    proc = shoal("--self-test", "--duration", "1s", "--clients", "16", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "generator ceiling:" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["errors"] == 0 and doc["throughput_rps"] > 500


def test_plan_routes_learn_each_models_task_from_its_server(server: ServerProcess, tmp_path: Path) -> None:
    """A plan has no tasks; the generator asks each server, so QA models get question/context bodies."""
    from shoal.loadtest.targets import routes_from_plan

    plan = Plan(instances=[InstancePlan(name="i0", type="local", price_per_hour=0.0)],
                servers=[ServerPlan(name="shoal-0", instance="i0", instance_type="local", processor="cpu",
                                    device="cpu", port=server.port, models=MODELS)],
                routing={m: "shoal-0" for m in MODELS})
    path = tmp_path / "plan.json"
    plan.save(path)
    routes = routes_from_plan(path, None)
    assert routes.tasks == {m: "classification" for m in MODELS}
