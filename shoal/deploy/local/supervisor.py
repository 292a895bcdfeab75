"""The local supervisor: a detached process that keeps every server of a fleet running.

Run as ``python -m shoal.deploy.local.supervisor STATE_DEPLOY_DIR``: it daemonises (so it
outlives the shell that ran deploy.sh), takes the fleet lock, starts each server in
its own process group with its pinning environment, restarts a dead one at once
(with exponential backoff while it keeps dying), and on SIGTERM stops them all:
SIGTERM, a grace period, then SIGKILL. Servers also get SIGTERM from the kernel if
the supervisor itself is killed (PR_SET_PDEATHSIG), so no server outlives it.
Servers are forked from a warm zygote (zygote.py) so a restart skips the imports.
"""

from __future__ import annotations

import http.client
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from shoal.deploy.local.fleet import FleetSpec, ServerSpec
from shoal.deploy.local.state import FleetPaths, start_time, terminate_groups, try_lock, write_json
from shoal.deploy.local.spawn import Reaper, Zygote, become_subreaper, exec_spawn

POLL_S = 0.2
STABLE_S = 60.0  # a server that ran this long before dying is restarted at once, even if never ready
PROBE_EVERY_S = 0.5
BACKOFF_S = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


Spawner = Callable[[ServerSpec, Path], int]


@dataclass
class Child:
    spec: ServerSpec
    log_path: Path
    pid: int | None = None
    pid_start: int | None = None  # /proc start time: tells `stop` this pid is still our server
    started_at: float = 0.0
    starts: int = 0
    failures: int = 0  # consecutive deaths before becoming ready
    ready: bool = False  # answered its readiness probe since its last start
    last_probe: float = 0.0
    next_start: float = 0.0
    last_exit: str | None = None
    last_exit_at: str | None = None

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)

    def start(self, spawn: Spawner, reaper: Reaper, log: Callable[[str], None]) -> None:
        with open(self.log_path, "ab") as out:
            out.write(f"--- {_now()} shoal supervisor: starting {self.spec.name} "
                      f"(start {self.starts + 1}): {' '.join(self.spec.argv)}\n".encode())
        self.started_at = time.monotonic()
        self.ready = False
        try:
            self.pid = spawn(self.spec, self.log_path)
            reaper.watch(self.pid)
            self.pid_start = start_time(self.pid)
        except OSError as exc:
            self.pid = None
            self._died(f"could not be started: {exc}", time.monotonic(), log)
            return
        self.starts += 1
        log(f"{self.spec.name}: started pid {self.pid} on port {self.spec.port}, device {self.spec.device}")

    def check(self, reaper: Reaper, log: Callable[[str], None]) -> bool:
        """Notice a dead server and schedule its restart; True if anything changed."""
        if self.pid is None:
            return False
        dead, code = reaper.exited(self.pid)
        if not dead:
            return False
        pid, self.pid = self.pid, None
        terminate_groups([pid], 1.0)  # anything the server spawned goes with it
        self._died(f"(pid {pid}) {_describe_exit(code)}", time.monotonic(), log)
        return True

    def _died(self, what: str, now: float, log: Callable[[str], None]) -> None:
        uptime = now - self.started_at if self.started_at else 0.0
        # Backoff is for servers that cannot come up; one that was serving is restarted at once.
        self.failures = 1 if self.ready or uptime >= STABLE_S else self.failures + 1
        self.ready = False
        delay = BACKOFF_S[min(self.failures - 1, len(BACKOFF_S) - 1)]
        self.next_start = now + delay
        self.last_exit = what
        self.last_exit_at = _now()
        line = f"{self.spec.name} {what} after {uptime:.1f} s; "
        if self.failures > 1:
            line += (f"it keeps dying ({self.failures} times in a row): restarting in {delay:.0f} s; "
                     f"see {self.log_path}")
        else:
            line += "restarting now"
        log(line)

    def probe(self, path: str | None, now: float, log: Callable[[str], None]) -> bool:
        """Poll readiness until the server first answers 200; True when it just became ready."""
        if self.pid is None or self.ready or path is None or now - self.last_probe < PROBE_EVERY_S:
            return False
        self.last_probe = now
        conn = http.client.HTTPConnection(self.spec.connect_host, self.spec.port, timeout=0.25)
        try:
            conn.request("GET", path)
            self.ready = conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()
        if self.ready:
            log(f"{self.spec.name}: ready {now - self.started_at:.2f} s after its start")
        return self.ready

    def due(self, now: float) -> bool:
        return self.pid is None and now >= self.next_start

    def snapshot(self, now: float) -> dict[str, Any]:
        running = self.pid is not None
        return {
            "pid": self.pid,
            "pid_start": self.pid_start if running else None,
            "ready": self.ready,
            "state": "running" if running else ("backoff" if self.failures > 1 else "restarting"),
            "starts": self.starts,
            "restarts": self.restarts,
            "uptime_s": round(now - self.started_at, 1) if running else 0.0,
            "consecutive_failures": self.failures,
            "next_start_in_s": round(max(0.0, self.next_start - now), 1) if not running else None,
            "last_exit": self.last_exit,
            "last_exit_at": self.last_exit_at,
        }


class Supervisor:
    def __init__(self, paths: FleetPaths, fleet: FleetSpec) -> None:
        self.paths = paths
        self.fleet = fleet
        self.children = [Child(s, paths.server_log(s.name)) for s in fleet.servers]
        self.stopping = False
        self.started_at = _now()
        self.reaper = Reaper()
        self.zygote: Zygote | None = None
        self.subreaper = become_subreaper()  # orphans of servers come to us, and are reaped

    def log(self, msg: str) -> None:
        print(f"{_now()} {msg}", flush=True)

    def write_state(self, phase: str) -> None:
        now = time.monotonic()
        write_json(self.paths.state, {
            "supervisor_pid": os.getpid(), "phase": phase, "started_at": self.started_at, "updated_at": _now(),
            "zygote_pid": self.zygote.pid if self.zygote else None,
            "servers": {c.spec.name: c.snapshot(now) for c in self.children},
        })

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def _start_zygote(self) -> None:
        """Warm fork server; without it servers start cold (slower, same behaviour)."""
        if not self.fleet.warm_fork:
            return
        zygote = Zygote(self.fleet.preload, self.paths.supervisor_log, os.getpid() if self.subreaper else None)
        t0 = time.monotonic()
        try:
            zygote.start()
        except (RuntimeError, OSError) as exc:
            self.log(f"warm start unavailable ({exc}): servers start cold")
            return
        self.zygote = zygote
        self.log(f"zygote pid {zygote.pid} preloaded {len(self.fleet.preload)} module(s) in "
                 f"{time.monotonic() - t0:.1f} s; servers are forked from it")

    def spawn(self, spec: ServerSpec, log_path: Path) -> int:
        env = {**os.environ, **spec.env}
        if self.zygote is not None:
            try:
                return self.zygote.spawn(spec.argv, env, spec.cores, log_path, f"shoal {spec.name}")
            except RuntimeError as exc:
                self.log(f"{exc}: starting {spec.name} cold, then the zygote again")
                self.zygote = None
                pid = exec_spawn(spec.argv, env, spec.cores, log_path)
                self._start_zygote()
                return pid
        return exec_spawn(spec.argv, env, spec.cores, log_path)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.log(f"supervisor pid {os.getpid()}: {len(self.children)} server(s), store {self.fleet.store}")
        self._start_zygote()
        for c in self.children:
            if not self.stopping:
                c.start(self.spawn, self.reaper, self.log)
        self.write_state("running")
        last_write = time.monotonic()
        while not self.stopping:
            now = time.monotonic()
            changed = False
            for c in self.children:
                if self.stopping:
                    break
                changed |= c.check(self.reaper, self.log)
                changed |= c.probe(self.fleet.ready_path, now, self.log)
                if c.due(now) and not self.stopping:
                    c.start(self.spawn, self.reaper, self.log)
                    changed = True
            if changed or now - last_write > 1.0:
                self.write_state("running")
                last_write = now
            time.sleep(POLL_S)
        self.shutdown()

    def shutdown(self) -> None:
        self.write_state("stopping")
        pids = [c.pid for c in self.children if c.pid is not None]
        self.log(f"stopping {len(pids)} server(s): SIGTERM, SIGKILL after {self.fleet.grace_s:.0f} s")
        killed = terminate_groups(pids, self.fleet.grace_s, self.log)
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None
        self.reaper.reap()
        for c in self.children:
            c.pid = None
        self.write_state("stopped")
        self.log(f"stopped ({len(killed)} needed SIGKILL)")


def daemonize(paths: FleetPaths) -> None:
    """Classic double fork: the launcher gets back one line (the pid, or why not) and exits."""
    read_fd, write_fd = os.pipe()
    if os.fork() > 0:  # launcher: wait for the daemon's word
        os.close(write_fd)
        with os.fdopen(read_fd) as r:
            answer = r.read().strip()
        print(answer or "error: the supervisor exited before starting (see its log)")
        os._exit(0 if answer.isdigit() else 1)
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    lock_fd = try_lock(paths.lock)
    if lock_fd is None:
        os.write(write_fd, b"error: a supervisor is already running for this state folder")
        os._exit(1)
    paths.logs.mkdir(parents=True, exist_ok=True)
    out = os.open(paths.supervisor_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.close(devnull)
    paths.pid.write_text(f"{os.getpid()}\n")
    os.write(write_fd, f"{os.getpid()}".encode())
    os.close(write_fd)
    # lock_fd stays open (close-on-exec, so servers do not inherit it) until this process dies


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m shoal.deploy.local.supervisor STATE_DIR/deploy")
    paths = FleetPaths(Path(args[0]).absolute())
    fleet = FleetSpec.load(paths.fleet)
    daemonize(paths)
    sup = Supervisor(paths, fleet)
    try:
        sup.run()
    except Exception as exc:  # log why, and never leave servers behind
        sup.log(f"supervisor failed: {type(exc).__name__}: {exc}")
        sup.shutdown()
        raise
    finally:
        paths.pid.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
