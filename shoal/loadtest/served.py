"""Start a real ``shoal serve`` for one sweep point and wait until it is ready.

Why a subprocess: the served path must be measured as users run it: a separate
server process on its own port, talked to over HTTP by the generator.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shoal.errors import ShoalError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``shoal serve --store STORE --port P`` with extra ``SHOAL_*`` settings; logs to ``log_path``."""

    def __init__(self, store_uri: str, log_path: Path, settings: dict[str, str] | None = None,
                 port: int | None = None, ready_timeout_s: float = 180.0, models: list[str] | None = None) -> None:
        self.store_uri = store_uri
        self.log_path = log_path
        self.settings = settings or {}
        self.port = port or free_port()
        self.ready_timeout_s = ready_timeout_s
        self.models = models
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerProcess":
        env = dict(os.environ)
        env.update({f"SHOAL_{k.upper()}": str(v) for k, v in self.settings.items()})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "shoal.cli", "serve", "--store", self.store_uri, "--host", "127.0.0.1",
               "--port", str(self.port)] + (["--models", ",".join(self.models)] if self.models else [])
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ShoalError(f"shoal serve exited with code {self.proc.returncode}: {self._tail()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ShoalError(f"shoal serve on port {self.port} was not ready within {self.ready_timeout_s:g}s: "
                         f"{self._tail()}")

    def _tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
