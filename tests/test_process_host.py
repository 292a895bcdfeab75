"""`shoal serve` and `shoal worker` go through one process host (shoal/server/process.py).

The worker once lacked malloc tuning, the switch interval and the header cap that `serve`
had: both real processes are started here and must show the host's start-up line and
answer 431 to an oversized request head. The unit part checks that both entry points
call the same ``prepare`` and ``serve_http``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from shoal.server import process
from tests.jobs_support import async_models, env_for  # noqa: F401 (fixture)
from tests.server_fixtures import REPO

HOST_LINE = re.compile(r"process host: malloc tuning applied, switch interval 0\.001 s")


def _start(args: list[str], env: dict[str, str], url_pattern: str) -> tuple[subprocess.Popen, list[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", *args, "--log-level", "info"], cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip())

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 90
    while True:
        found = [m.group(1) for line in lines if (m := re.search(url_pattern, line))]
        if found:
            return proc, lines, found[0]
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{args[0]} did not start: {' | '.join(lines)}")
        time.sleep(0.05)


def _big_head_refused(url: str) -> bool:
    """A 2 MB header: the host's protocol answers 431 (or closes while we send); plain httptools would take it."""
    host, port = url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2_000_000 + b"\r\n\r\n"
    try:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head)
            reply = sock.recv(200)
    except OSError:
        return True  # closed while we were still sending: also a refusal
    return not reply or int(reply.split()[1]) == 431


def _stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_and_worker_both_run_the_process_host(async_models: str, tmp_path: Path) -> None:  # noqa: F811
    env = env_for(tmp_path, f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    common = ["--store", async_models, "--models", "tiny-a", "--executors", "1", "--threads", "1"]
    for args, pattern in ((["serve", *common, "--port", "0"], r"listening on (http://\S+)"),
                          (["worker", *common, "--port", "0"], r"metrics on (http://\S+)/metrics")):
        proc, lines, url = _start(args, env, pattern)
        try:
            assert any(HOST_LINE.search(line) for line in lines), f"{args[0]}: no host line in {lines}"
            assert httpx.get(url + "/v2/health/live", timeout=10).status_code == 200
            assert _big_head_refused(url), f"{args[0]} does not cap request heads"
        finally:
            # uvicorn re-raises the signal after a clean shutdown; the headless worker exits 0
            assert _stop(proc) in (0, -15), f"{args[0]} did not stop cleanly: {' | '.join(lines[-5:])}"


def test_both_entry_points_call_the_same_prepare_and_http_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: serve.run and run_worker reach process.prepare and process.serve_http, nothing of their own."""
    from shoal.config import load_settings
    from shoal.devices import parse_device
    from shoal.jobs import run_worker
    from shoal.jobs.settings import load_async_settings
    from shoal.server import serve

    calls: list[str] = []

    class Stop(Exception):
        pass

    def fake_prepare(settings: object, device: object, log_level: str) -> int:
        calls.append("prepare")
        raise Stop

    monkeypatch.setattr(process, "prepare", fake_prepare)
    settings = load_settings(store="file:///nonexistent-store", port=0)
    device = parse_device("cpu")
    for name, start in (("serve", lambda: serve.run(settings, device, ["m"])),
                        ("worker", lambda: run_worker.run_worker(settings, load_async_settings(), device, ["m"],
                                                                 None, "warning"))):
        calls.clear()
        with pytest.raises(Stop):
            start()
        assert calls == ["prepare"], f"{name} does not start through shoal.server.process.prepare"
