"""End to end: `shoal deploy local` runs real `shoal serve` processes under the supervisor.

Two tiny traced models; a fleet of two servers; both answer ready and predict; a
SIGKILLed server is back and ready within 5 s; a second deploy is refused politely;
`stop` leaves no process and no listening port behind. The fixture stops the fleet
(and SIGKILLs anything recorded) even when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from shoal.deploy.local.control import port_in_use
from shoal.deploy.local.state import FleetPaths, pid_alive, read_json, read_pid
from shoal.pack.plan_file import InstancePlan, Plan, ServerPlan
from shoal.store.local import LocalStore
from tests.test_deploy_local_supervisor import free_ports, wait_for

pytestmark = pytest.mark.skipif(
    not (Path(__file__).parent.parent / "shoal" / "server" / "cli.py").exists(), reason="shoal serve not built yet")

REPO = Path(__file__).parent.parent
TEXT = {"text": "The delivery was late but the support team was wonderful."}


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shoal.trace.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("deploy-local")
    store = LocalStore(root / "store")
    make_tiny_model(store, "tiny-a", task="classification", build_dir=root / "build")
    make_tiny_model(store, "tiny-b", task="classification", seed=1, build_dir=root / "build")
    return root / "store"


class Deploy:
    """Runs `shoal deploy ...` in a private working folder with its own state folder."""

    def __init__(self, cwd: Path, store: Path) -> None:
        self.cwd = cwd
        self.paths = FleetPaths.under(cwd / ".shoal")
        self.env = {**os.environ, "SHOAL_STATE_DIR": str(cwd / ".shoal"), "SHOAL_STORE": f"file://{store}",
                    "HF_HUB_OFFLINE": "1", "SHOAL_PRELOAD": "all"}

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shoal.cli", "deploy", *args], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def script(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The user's way in: ./deploy.sh (it activates the repo's virtualenv)."""
        return subprocess.run([str(REPO / "deploy.sh"), *args], cwd=self.cwd, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def server_pids(self) -> dict[str, int]:
        servers = read_json(self.paths.state).get("servers", {})
        return {n: st["pid"] for n, st in servers.items() if st.get("pid")}


@pytest.fixture
def deploy(tmp_path: Path, tiny_store: Path) -> Iterator[Deploy]:
    d = Deploy(tmp_path, tiny_store)
    yield d
    leftovers = list(d.server_pids().values()) + [p for p in [read_pid(d.paths.pid)] if p]
    d("stop", timeout=60)
    for pid in leftovers:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def predict(base: str, model_id: str) -> dict:
    resp = httpx.post(f"{base}/predictions/{model_id}", json=TEXT, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_two_workers_restart_and_clean_stop(deploy: Deploy) -> None:
    base = free_ports(2)
    proc = deploy.script("--workers", "2", "--port", str(base), "--timeout", "90")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    urls = [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
    for url in urls:
        assert url in proc.stdout
        assert ready(url)
        assert predict(url, "tiny-a")["model_id"] == "tiny-a"
        assert predict(url, "tiny-b")["model_id"] == "tiny-b"
    # The printed curl works as printed.
    curl = next(line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("curl "))
    assert re.search(r"/predictions/tiny-[ab]", curl)
    answer = subprocess.run(["bash", "-c", curl + " -w ' HTTP%{http_code}'"], capture_output=True, text=True,
                            timeout=30)
    assert answer.stdout.endswith("HTTP200"), answer.stdout

    # Deploying again does not start a second fleet.
    again = deploy("local", "--workers", "2", "--port", str(base), "--timeout", "30")
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
    other = deploy("local", "--workers", "1", "--port", str(base), "--no-wait")
    assert other.returncode != 0 and "already running" in other.stderr and "Traceback" not in other.stderr

    # A SIGKILLed server is back and ready within 5 s.
    victim = deploy.server_pids()["shoal-1"]
    os.kill(victim, signal.SIGKILL)
    took = wait_for(lambda: deploy.server_pids().get("shoal-1") not in (None, victim) and ready(urls[1]), 5.0, 0.1)
    assert predict(urls[1], "tiny-a")["model_id"] == "tiny-a"
    print(f"restart to ready: {took:.2f} s")

    status = json.loads(deploy("status", "--json").stdout)
    by_name = {s["name"]: s for s in status["servers"]}
    assert status["running"] and by_name["shoal-1"]["restarts"] == 1 and by_name["shoal-0"]["restarts"] == 0
    assert all(s["ready"] for s in status["servers"])
    assert "shoal-1" in deploy("status").stdout
    logs = deploy("logs", "-n", "5").stdout
    assert "==> supervisor" in logs and "killed by SIGKILL" in logs

    pids = list(deploy.server_pids().values()) + [read_pid(deploy.paths.pid)]
    stopped = deploy.script("stop", timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not any(pid_alive(p) for p in pids if p)
    assert not any(port_in_use("127.0.0.1", base + i) for i in range(2))
    assert "no local fleet is running" in deploy.script("status").stdout


def test_deploy_script_bad_input_is_one_line(deploy: Deploy) -> None:
    for args, words in [(["--runtime", "nomad"], "unknown runtime 'nomad'"), (["--workers", "99"], "--workers 99"),
                        (["--plan", "missing.json"], "missing.json does not exist")]:
        proc = deploy.script(*args, timeout=60)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode != 0 and len(lines) == 1 and words in lines[0], proc.stderr


def test_plan_runs_one_process_per_server(deploy: Deploy, tmp_path: Path) -> None:
    base = free_ports(2)
    servers = [ServerPlan(name=f"srv-{i}", instance="local-0", instance_type="local", processor="cpu",
                          device="cpu", port=base + i, models=[m]) for i, m in enumerate(["tiny-a", "tiny-b"])]
    plan = Plan(instances=[InstancePlan(name="local-0", type="local", price_per_hour=0.0)], servers=servers,
                routing={"tiny-a": "srv-0", "tiny-b": "srv-1"})
    plan.save(tmp_path / "plan.json")
    t0 = time.monotonic()
    proc = deploy("local", "--plan", "plan.json", "--timeout", "90")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"deploy of a 2-server plan, ready in {time.monotonic() - t0:.1f} s")
    assert predict(f"http://127.0.0.1:{base}", "tiny-a")["model_id"] == "tiny-a"
    assert predict(f"http://127.0.0.1:{base + 1}", "tiny-b")["model_id"] == "tiny-b"
    status = json.loads(deploy("status", "--json").stdout)
    assert [(s["name"], s["port"], s["models"]) for s in status["servers"]] == [
        ("srv-0", base, ["tiny-a"]), ("srv-1", base + 1, ["tiny-b"])]
    # --restart replaces the running fleet cleanly (new supervisor, same ports, all ready).
    first = status["supervisor_pid"]
    again = deploy("local", "--plan", "plan.json", "--restart", "--timeout", "90")
    assert again.returncode == 0, again.stdout + again.stderr
    status = json.loads(deploy("status", "--json").stdout)
    assert status["supervisor_pid"] != first and not pid_alive(first) and all(s["ready"] for s in status["servers"])
    assert deploy("stop", timeout=60).returncode == 0
    assert not any(port_in_use("127.0.0.1", base + i) for i in range(2))


def test_servers_offer_grpc_when_asked(deploy: Deploy) -> None:
    """./deploy.sh --grpc-port G: each server also speaks KServe v2 gRPC (G, G+1, ...) from the same process."""
    import numpy as np
    import tritonclient.grpc as tg

    base = free_ports(2)
    proc = deploy.script("--port", str(base), "--grpc-port", str(base + 1), "--timeout", "90")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"grpc 127.0.0.1:{base + 1}" in proc.stdout
    with tg.InferenceServerClient(f"127.0.0.1:{base + 1}") as client:
        assert client.is_server_ready()
        text = tg.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([TEXT["text"].encode()], dtype=object))
        label = client.infer("tiny-a", [text]).as_numpy("label")[0].decode()
    assert label == predict(f"http://127.0.0.1:{base}", "tiny-a")["prediction"]["label"]
    assert json.loads(deploy("status", "--json").stdout)["servers"][0]["grpc"] == f"127.0.0.1:{base + 1}"
    assert deploy("stop", timeout=60).returncode == 0
    assert not port_in_use("127.0.0.1", base + 1)
