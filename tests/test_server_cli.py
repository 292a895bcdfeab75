"""`shoal serve` command line: clear one-line errors, and a plan's server runs its models only."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.server_fixtures import ServerProcess, run_cli, store_uri, tiny_store  # noqa: F401


def one_line_error(args: list[str], *needles: str) -> None:
    proc = run_cli("serve", *args)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("device,needle", [("cuda:0", "CUDA"), ("neuron:0-1", "torch-neuron"),
                                           ("tpu", "unknown device")])
def test_missing_or_unknown_device(store_uri: str, device: str, needle: str) -> None:
    one_line_error(["--store", store_uri, "--device", device, "--port", "0"], needle)


def test_bad_flags(store_uri: str, tmp_path: Path) -> None:
    one_line_error(["--store", store_uri, "--preload", "some"], "--preload")
    one_line_error(["--store", store_uri, "--memory-budget", "lots"], "cannot read size")
    one_line_error(["--store", store_uri, "--models", "../etc"], "invalid model id")
    one_line_error(["--plan", str(tmp_path / "none.json"), "--server", "s"], "does not exist")
    one_line_error(["--plan", str(tmp_path / "none.json")], "--server")


def test_port_in_use(store_uri: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        one_line_error(["--store", store_uri, "--port", str(port)], "already in use")


def test_plan_server_serves_its_models(store_uri: str, tmp_path: Path) -> None:
    plan = {"store": store_uri, "servers": [
        {"name": "shoal-0", "instance": "local-0", "instance_type": "local", "processor": "cpu", "device": "cpu",
         "port": 8080, "models": ["tiny-cls", "tiny-qa"]},
        {"name": "shoal-1", "instance": "local-0", "instance_type": "local", "processor": "cpu", "device": "cpu",
         "port": 8081, "models": ["tiny-emb"]}]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    one_line_error(["--plan", str(path), "--server", "shoal-9"], "no server named")
    proc = ServerProcess(["--plan", str(path), "--server", "shoal-0", "--preload", "none"]).start()
    try:
        with proc.client() as c:
            assert sorted(m["id"] for m in c.get("/models").json()["models"]) == ["tiny-cls", "tiny-qa"]
            assert c.post("/predictions/tiny-cls", json={"text": "x"}).status_code == 200
            assert c.post("/predictions/tiny-emb", json={"text": "x"}).status_code == 404
    finally:
        proc.stop()
