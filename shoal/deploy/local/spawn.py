"""How the supervisor starts server processes and learns that one died.

Servers come from the warm zygote (zygote.py) when it is up, else from a plain
fork+exec. Either way each server is a child of the supervisor (the zygote's
grandchildren are re-parented to it: it is a "child subreaper"), so one
``waitpid(-1)`` loop collects every exit status, including of orphans a server leaves.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from shoal.deploy.local.state import pid_alive
from shoal.deploy.local.zygote import set_pdeathsig

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process instead of init (Linux >= 3.4)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class Reaper:
    """Collects every exit status of this process's children (non-blocking); keeps those of watched pids."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.watched: set[int] = set()

    def watch(self, pid: int) -> None:
        self.watched.add(pid)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.watched:
                self.statuses[pid] = os.waitstatus_to_exitcode(status)

    def exited(self, pid: int) -> tuple[bool, int | None]:
        """(dead, exit code: negative = signal, None = unknown because it was not our child)."""
        self.reap()
        if pid in self.statuses:
            self.watched.discard(pid)
            return True, self.statuses.pop(pid)
        if pid_alive(pid):
            return False, None
        self.reap()  # it may have died just after the first reap: collect its status if it is ours
        self.watched.discard(pid)
        return True, self.statuses.pop(pid, None)


def _child_setup(cores: list[int] | None) -> Callable[[], None]:
    """Between fork and exec: own process group, die with the supervisor, CPU affinity."""

    def setup() -> None:
        os.setpgid(0, 0)
        set_pdeathsig()
        if cores and hasattr(os, "sched_setaffinity"):
            wanted = set(cores) & os.sched_getaffinity(0)
            if wanted:
                os.sched_setaffinity(0, wanted)

    return setup


def exec_spawn(argv: list[str], env: dict[str, str], cores: list[int] | None, log: Path) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=_child_setup(cores))
    proc.returncode = 0  # the Reaper collects its status; keep Popen from waiting or warning
    return proc.pid


class Zygote:
    """Client side of the warm fork server."""

    def __init__(self, preload: list[str], stderr_path: Path, reaper_pid: int | None) -> None:
        self.preload = preload
        self.stderr_path = stderr_path
        self.reaper_pid = reaper_pid
        self.proc: subprocess.Popen[bytes] | None = None
        self._buf = b""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout_s: float = 120.0) -> None:
        """Start it and wait until its imports are done; raise RuntimeError if it does not get there."""
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "shoal.deploy.local.zygote", *self.preload],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, bufsize=0,
                                         preexec_fn=set_pdeathsig)
        self.proc.returncode = 0  # reaped by the Reaper, never by Popen
        self._buf = b""
        if self._readline(timeout_s) != "ready":
            self.close()
            raise RuntimeError("the zygote did not finish its imports")

    def _readline(self, timeout_s: float) -> str | None:
        assert self.proc and self.proc.stdout
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode().strip()

    def spawn(self, argv: list[str], env: dict[str, str], cores: list[int] | None, log: Path, name: str) -> int:
        """Fork a server; RuntimeError if the zygote is gone or does not answer."""
        if self.proc is None or self.proc.stdin is None:
            raise RuntimeError("the zygote is not running")
        req: dict[str, Any] = {"argv": argv, "env": env, "cores": cores, "log": str(log),
                               "reaper": self.reaper_pid, "name": name}
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
        except OSError as exc:
            self.close()
            raise RuntimeError(f"the zygote is gone ({exc.strerror})") from None
        line = self._readline(10.0)
        answer = json.loads(line) if line else {"error": "no answer"}
        if "pid" not in answer:
            self.close()
            raise RuntimeError(f"the zygote could not fork: {answer.get('error')}")
        return int(answer["pid"])

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        pid = self.proc.pid
        deadline = time.monotonic() + 2
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(pid):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None
