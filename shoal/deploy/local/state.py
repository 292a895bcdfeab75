"""Files of a local deployment under <state_dir>/deploy/, and process helpers.

Why a lock file: "is a fleet running?" must not trust a pid file (pids are reused,
a killed supervisor leaves its file behind). The supervisor holds an exclusive
``flock`` for its whole life; the kernel drops it the moment the process dies.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class FleetPaths:
    root: Path

    @classmethod
    def under(cls, state_dir: Path) -> "FleetPaths":
        return cls(Path(state_dir).absolute() / "deploy")

    @property
    def fleet(self) -> Path:
        return self.root / "fleet.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def lock(self) -> Path:
        return self.root / "supervisor.lock"

    @property
    def pid(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def supervisor_log(self) -> Path:
        return self.logs / "supervisor.log"

    def server_log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def rel(self, path: Path) -> str:
        """A path as the user should read it: relative to the working directory when inside it."""
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)


def try_lock(path: Path) -> int | None:
    """Take the exclusive lock; return its fd (keep it open to hold the lock) or None if held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def supervisor_running(paths: FleetPaths) -> bool:
    if not paths.lock.exists():
        return False
    fd = try_lock(paths.lock)
    if fd is None:
        return True
    os.close(fd)
    return False


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as dead."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process for good."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def same_process(pid: int, started: int | None) -> bool:
    """True if ``pid`` is still the process that was recorded (not a reused pid)."""
    return pid_alive(pid) and started is not None and start_time(pid) == started


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group (a server and anything it spawned); False if it is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def group_alive(pgid: int) -> bool:
    return signal_group(pgid, 0) and _group_has_live_member(pgid)


def _group_has_live_member(pgid: int) -> bool:
    """killpg(0) also succeeds for a group of zombies; look for a live member in /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def terminate_groups(pgids: list[int], grace_s: float, log: Any = None) -> list[int]:
    """SIGTERM every group, wait up to ``grace_s``, then SIGKILL what is left; return groups killed hard."""
    live = [g for g in pgids if signal_group(g, signal.SIGTERM)]
    deadline = time.monotonic() + grace_s
    while live and time.monotonic() < deadline:
        time.sleep(0.1)
        live = [g for g in live if group_alive(g)]
    for g in live:
        if log:
            log(f"process group {g} still running after {grace_s:.0f} s: SIGKILL")
        signal_group(g, signal.SIGKILL)
    end = time.monotonic() + 5
    while any(group_alive(g) for g in live) and time.monotonic() < end:
        time.sleep(0.05)
    return live


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
