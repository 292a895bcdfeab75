"""The supervisor on its own, with small real HTTP processes as servers (fast; no model loading).

What is checked: restart of a killed server, backoff and a clear log line for one that
keeps dying, refusal of a second fleet and of a busy port, and that `stop` (or the
supervisor being killed) leaves no process behind.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from shoal.deploy.local.control import launch, port_in_use, probe_ready, status, stop, wait_ready
from shoal.deploy.local.fleet import FleetSpec, ServerSpec
from shoal.config import Settings
from shoal.deploy.local.state import FleetPaths, pid_alive, read_json, read_pid, supervisor_running
from shoal.errors import ShoalError, UsageError

# A server stand-in: answers 200 to every GET (so /v2/health/ready), after an optional delay.
STUB = """
import http.server, sys, time
time.sleep(float(sys.argv[2]))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
print("stub ready on", sys.argv[1], flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def free_ports(n: int) -> int:
    """A base port with n consecutive free ports after it."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n < 65535 and not any(port_in_use("127.0.0.1", base + i) for i in range(n)):
            return base
    raise RuntimeError("no free port range")


def stub_fleet(base: int, n: int = 2, argv: list[str] | None = None, delay: float = 0.0) -> FleetSpec:
    servers = [ServerSpec(name=f"stub-{i}", host="127.0.0.1", port=base + i, device="cpu", cores=None,
                          argv=argv or [sys.executable, "-c", STUB, str(base + i), str(delay)],
                          env={"SHOAL_TEST": "1"}) for i in range(n)]
    return FleetSpec(store="file://unused", host="127.0.0.1", servers=servers, grace_s=2.0)


def log_has(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


def server_pids(paths: FleetPaths) -> dict[str, int]:
    servers = read_json(paths.state).get("servers", {})
    return {name: st["pid"] for name, st in servers.items() if st.get("pid")}


@pytest.fixture
def state(tmp_path: Path) -> Iterator[tuple[Settings, FleetPaths]]:
    """Settings whose state folder is private to the test; the fleet is always stopped afterwards."""
    settings = Settings(state_dir=tmp_path / ".shoal")
    paths = FleetPaths.under(settings.state_dir)
    yield settings, paths
    leftovers = list(server_pids(paths).values()) + [p for p in [read_pid(paths.pid)] if p]
    stop(paths, timeout_s=10)
    for pid in leftovers:  # belt and braces if stop itself failed
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def wait_for(cond, timeout: float, step: float = 0.05) -> float:  # noqa: ANN001
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.mark.parametrize("warm_fork", [True, False], ids=["zygote", "cold"])
def test_restart_status_and_clean_stop(state: tuple[Settings, FleetPaths], warm_fork: bool) -> None:
    settings, paths = state
    fleet = stub_fleet(free_ports(2))
    fleet.warm_fork = warm_fork
    sup_pid = launch(paths, fleet)
    wait_ready(settings, fleet, timeout_s=20)
    assert supervisor_running(paths) and pid_alive(sup_pid)
    before = server_pids(paths)
    assert set(before) == {"stub-0", "stub-1"}

    os.kill(before["stub-0"], signal.SIGKILL)
    took = wait_for(lambda: server_pids(paths).get("stub-0") not in (None, before["stub-0"])
                    and probe_ready(fleet.servers[0]), timeout=5)
    assert took < 5
    info = status(settings)
    by_name = {s["name"]: s for s in info["servers"]}
    assert by_name["stub-0"]["restarts"] == 1 and by_name["stub-1"]["restarts"] == 0
    assert by_name["stub-0"]["ready"] and by_name["stub-1"]["ready"]
    assert "SIGKILL" in by_name["stub-0"]["last_exit"]
    log = paths.supervisor_log.read_text()
    assert "killed by SIGKILL" in log
    assert ("servers are forked from it" in log) == warm_fork
    assert (Path(f"/proc/{before['stub-1']}/comm").read_text().strip() == "shoal stub-1") == warm_fork

    pids = list(server_pids(paths).values()) + [sup_pid]
    was_running, alive = stop(paths)
    assert was_running and alive == 0
    assert not any(pid_alive(p) for p in pids)
    assert not supervisor_running(paths)
    assert not any(port_in_use("127.0.0.1", s.port) for s in fleet.servers)
    assert stop(paths) == (False, 0)


def test_crash_loop_backs_off_and_deploy_gives_up(state: tuple[Settings, FleetPaths]) -> None:
    settings, paths = state
    argv = [sys.executable, "-c", "import sys; print('cannot load model zz'); sys.exit(3)"]
    fleet = stub_fleet(free_ports(1), n=1, argv=argv)
    launch(paths, fleet)
    with pytest.raises(ShoalError) as info:
        wait_ready(settings, fleet, timeout_s=30)
    msg = str(info.value)
    assert "stub-0 died 3 times" in msg and "exited with code 3" in msg and "cannot load model zz" in msg
    assert not supervisor_running(paths)
    log = paths.supervisor_log.read_text()
    assert "it keeps dying (2 times in a row): restarting in 1 s" in log
    assert "restarting in 2 s" in log


def test_second_fleet_and_busy_port_are_refused(state: tuple[Settings, FleetPaths], tmp_path: Path) -> None:
    settings, paths = state
    base = free_ports(3)
    fleet = stub_fleet(base)
    launch(paths, fleet)
    # A second supervisor on the same state folder refuses to start (the lock), leaving the first alone.
    with pytest.raises(ShoalError, match="already running"):
        launch(paths, stub_fleet(base + 1, n=1, delay=0))
    assert supervisor_running(paths)
    # Another program on a port: one clear error naming it.
    wait_ready(settings, fleet, timeout_s=20)
    other = FleetPaths.under(tmp_path / "other")
    with pytest.raises(UsageError, match=f"port {base} on 127.0.0.1 is already in use"):
        launch(other, stub_fleet(base, n=1))
    assert not other.fleet.exists()


def test_killed_supervisor_takes_its_servers_along(state: tuple[Settings, FleetPaths]) -> None:
    settings, paths = state
    fleet = stub_fleet(free_ports(2))
    sup_pid = launch(paths, fleet)
    wait_ready(settings, fleet, timeout_s=20)
    pids = list(server_pids(paths).values())
    os.kill(sup_pid, signal.SIGKILL)
    wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=5)
    assert not supervisor_running(paths)


def test_servers_get_their_pinning_environment(state: tuple[Settings, FleetPaths]) -> None:
    settings, paths = state
    base = free_ports(1)
    code = STUB.replace('b"ok"', 'os.environ["SHOAL_TEST"].encode()').replace("import http", "import os, http")
    fleet = stub_fleet(base, n=1, argv=[sys.executable, "-c", code, str(base), "0"])
    fleet.servers[0].cores = [0]
    launch(paths, fleet)
    wait_ready(settings, fleet, timeout_s=20)
    assert httpx.get(f"http://127.0.0.1:{base}/").text == "1"
    pid = server_pids(paths)["stub-0"]
    assert os.sched_getaffinity(pid) == {0}
    assert os.getpgid(pid) == pid  # its own process group: stop signals everything it spawns


STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"


def test_server_ignoring_sigterm_is_killed_after_the_grace(state: tuple[Settings, FleetPaths]) -> None:
    settings, paths = state
    fleet = stub_fleet(free_ports(1), n=1, argv=[sys.executable, "-c", STUBBORN])
    fleet.grace_s = 1.0
    launch(paths, fleet)
    wait_for(lambda: log_has(paths.server_log("stub-0"), "up") and "stub-0" in server_pids(paths), timeout=10)
    pid = server_pids(paths)["stub-0"]
    t0 = time.monotonic()
    assert stop(paths) == (True, 0)
    assert 1.0 <= time.monotonic() - t0 < 8
    assert not pid_alive(pid)
    assert "(1 needed SIGKILL)" in paths.supervisor_log.read_text()


def test_stop_cleans_up_after_a_killed_supervisor(state: tuple[Settings, FleetPaths]) -> None:
    settings, paths = state
    fleet = stub_fleet(free_ports(1), n=1, argv=[sys.executable, "-c", STUBBORN])
    fleet.grace_s = 0.5
    sup = launch(paths, fleet)
    wait_for(lambda: log_has(paths.server_log("stub-0"), "up") and "stub-0" in server_pids(paths), timeout=10)
    pid = server_pids(paths)["stub-0"]
    os.kill(sup, signal.SIGKILL)  # its SIGTERM-on-parent-death is ignored by this server
    wait_for(lambda: not supervisor_running(paths), timeout=5)
    assert pid_alive(pid)
    assert stop(paths) == (True, 0)
    assert not pid_alive(pid)


def test_a_dead_zygote_costs_one_cold_start_and_comes_back(state: tuple[Settings, FleetPaths]) -> None:
    settings, paths = state
    fleet = stub_fleet(free_ports(2))
    launch(paths, fleet)
    wait_ready(settings, fleet, timeout_s=20)
    zygote = read_json(paths.state)["zygote_pid"]
    os.kill(zygote, signal.SIGKILL)
    assert all(probe_ready(s) for s in fleet.servers)  # servers are not the zygote's children
    victim = server_pids(paths)["stub-0"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: server_pids(paths).get("stub-0") not in (None, victim) and probe_ready(fleet.servers[0]), 10)
    wait_for(lambda: read_json(paths.state).get("zygote_pid") not in (None, zygote), 20)
    assert "the zygote is gone" in paths.supervisor_log.read_text()


def test_a_serving_server_killed_again_and_again_is_restarted_at_once(state: tuple[Settings, FleetPaths]) -> None:
    settings, paths = state
    fleet = stub_fleet(free_ports(1), n=1)
    launch(paths, fleet)
    wait_ready(settings, fleet, timeout_s=20)
    for _ in range(4):
        wait_for(lambda: read_json(paths.state)["servers"]["stub-0"]["ready"], 5)  # the supervisor saw it serve
        victim = server_pids(paths)["stub-0"]
        os.kill(victim, signal.SIGKILL)
        took = wait_for(lambda: server_pids(paths).get("stub-0") not in (None, victim)
                        and probe_ready(fleet.servers[0]), 5)
        assert took < 2.5  # no backoff: 0.2 s poll + the stub's start
    log = paths.supervisor_log.read_text()
    assert "keeps dying" not in log and log.count("restarting now") == 4
    assert "stub-0: ready" in log


def test_ready_timeout_names_the_server_and_its_log(state: tuple[Settings, FleetPaths]) -> None:
    settings, paths = state
    fleet = stub_fleet(free_ports(2))
    fleet.servers[1].argv = [sys.executable, "-c", "import time; time.sleep(600)"]  # never listens
    launch(paths, fleet)
    with pytest.raises(ShoalError) as info:
        wait_ready(settings, fleet, timeout_s=3)
    msg = str(info.value)
    assert "1 of 2 server(s) not ready after 3 s (stub-1)" in msg and "stub-1.log" in msg and "stub-0.log" not in msg
    assert "./deploy.sh stop" in msg and supervisor_running(paths)  # left running to be inspected
