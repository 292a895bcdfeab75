"""A real S3-compatible server (SeaweedFS `weed mini`) on loopback, for store tests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ACCESS_KEY = "shoal-test-access"
SECRET_KEY = "shoal-test-secret-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen
    log: Path
    ports: dict[str, int] = field(default_factory=dict)
    grpc: dict[str, int] = field(default_factory=dict)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_seaweedfs(workdir: Path, ports: dict[str, int] | None = None, grpc: dict[str, int] | None = None) -> S3Server:
    """Start ``weed mini`` in ``workdir``; pass the ports of an earlier run to restart it at the same endpoint."""
    weed = shutil.which("weed") or str(Path(os.sys.executable).parent / "weed")
    ports = ports or {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    grpc = grpc or {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    data = workdir / "weed-data"
    data.mkdir(parents=True, exist_ok=True)
    s3_config = workdir / "s3.json"  # one identity: requests signed with other keys are refused
    s3_config.write_text(json.dumps({"identities": [{
        "name": "shoal-test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    cmd = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
           "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
           f"-s3.config={s3_config}",
           f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
           f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
           f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
           f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}",
           f"-admin.port={ports['admin']}", f"-admin.port.grpc={grpc['admin']}"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    log = workdir / "weed.log"
    proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            httpx.get(endpoint, timeout=1)
            return S3Server(endpoint, proc, log, ports, grpc)
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"SeaweedFS S3 did not come up on {endpoint}: {log.read_text()[-2000:]}")
