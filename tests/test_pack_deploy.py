"""End to end: traced models -> `shoal pack --instances local --servers 2` -> `shoal deploy local`.

The acceptance path of the pack stage: the plan it writes is served as is, each model
answering on the server the routing table names.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from shoal.deploy.local.state import FleetPaths, pid_alive, read_json, read_pid
from shoal.pack.plan_file import load_plan
from shoal.store.local import LocalStore
from tests.test_deploy_local_supervisor import free_ports

TEXT = {"text": "The delivery was late but the support team was wonderful."}


def test_packed_plan_is_served_by_deploy_local(tmp_path: Path) -> None:
    from shoal.trace.tiny import make_tiny_model

    store = LocalStore(tmp_path / "store")
    for i, model_id in enumerate(["tiny-a", "tiny-b", "tiny-c"]):
        make_tiny_model(store, model_id, seed=i, build_dir=tmp_path / "build")
    env = {**os.environ, "SHOAL_STATE_DIR": str(tmp_path / ".shoal"), "SHOAL_STORE": f"file://{tmp_path / 'store'}",
           "HF_HUB_OFFLINE": "1"}

    def shoal(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shoal.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    base = free_ports(2)
    packed = shoal("pack", "--instances", "local", "--servers", "2", "--base-port", str(base), "-o", "plan.json")
    assert packed.returncode == 0, packed.stderr
    plan = load_plan(tmp_path / "plan.json")
    assert [s.port for s in plan.servers] == [base, base + 1]
    assert sorted(plan.routing) == ["tiny-a", "tiny-b", "tiny-c"]
    paths = FleetPaths.under(tmp_path / ".shoal")
    try:
        up = shoal("deploy", "local", "--plan", "plan.json", "--timeout", "120", timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr
        for model_id, server in plan.routing.items():
            port = plan.server(server).port
            resp = httpx.post(f"http://127.0.0.1:{port}/predictions/{model_id}", json=TEXT, timeout=30)
            assert resp.status_code == 200, resp.text
            assert resp.json()["model_id"] == model_id
    finally:
        servers = read_json(paths.state).get("servers", {}) if paths.state.exists() else {}
        leftovers = [st["pid"] for st in servers.values() if st.get("pid")] + [p for p in [read_pid(paths.pid)] if p]
        shoal("deploy", "stop", timeout=60)
        for pid in leftovers:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


pytestmark = pytest.mark.skipif(
    not (Path(__file__).parent.parent / "shoal" / "server" / "cli.py").exists(), reason="shoal serve not built yet")
