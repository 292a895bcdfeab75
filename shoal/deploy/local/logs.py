"""`deploy logs [--follow]`: the supervisor's and every server's log, optionally followed live."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, TextIO

from shoal.deploy.local.fleet import FleetSpec
from shoal.deploy.local.state import FleetPaths, supervisor_running
from shoal.errors import UsageError


def log_files(paths: FleetPaths, server: str | None = None) -> dict[str, Path]:
    """Label -> log file: the supervisor's, then each server's (or just one server's)."""
    if not paths.fleet.exists():
        raise UsageError("no local deployment here yet: run ./deploy.sh first")
    fleet = FleetSpec.load(paths.fleet)
    names = [s.name for s in fleet.servers]
    if server is not None:
        if server not in names:
            raise UsageError(f"no server named {server!r} in the local fleet; servers: {', '.join(names)}")
        return {server: paths.server_log(server)}
    return {"supervisor": paths.supervisor_log, **{n: paths.server_log(n) for n in names}}


def _last_lines(path: Path, n: int) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max(64 * 1024, n * 400)))
            return fh.read().decode(errors="replace").splitlines()[-n:]
    except FileNotFoundError:
        return []


def show(files: dict[str, Path], lines: int, out: TextIO) -> None:
    for label, path in files.items():
        out.write(f"==> {label}: {path} <==\n")
        for ln in _last_lines(path, lines):
            out.write(ln + "\n")
        out.write("\n")
    out.flush()


def follow(files: dict[str, Path], out: TextIO, keep_going: Callable[[], bool] = lambda: True,
           poll_s: float = 0.25) -> None:
    """Print new lines of every file as they come, prefixed with their label (like `tail -F`)."""
    width = max(len(k) for k in files)
    offsets = {k: (p.stat().st_size if p.exists() else 0) for k, p in files.items()}
    partial = {k: "" for k in files}
    while keep_going():
        for label, path in files.items():
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size < offsets[label]:  # rotated or truncated: start again from the top
                offsets[label] = 0
            if size == offsets[label]:
                continue
            with open(path, "rb") as fh:
                fh.seek(offsets[label])
                chunk = fh.read()
            offsets[label] += len(chunk)
            text = partial[label] + chunk.decode(errors="replace")
            *complete, partial[label] = text.split("\n")
            for ln in complete:
                out.write(f"{label:<{width}} | {ln}\n")
        out.flush()
        time.sleep(poll_s)


def follow_while_running(paths: FleetPaths, files: dict[str, Path], out: TextIO) -> None:
    """Follow until Ctrl-C; also return shortly after the fleet stops, so scripts do not hang."""
    grace = [0]

    def keep_going() -> bool:
        if supervisor_running(paths):
            grace[0] = 0
            return True
        grace[0] += 1
        return grace[0] < 8  # a couple of seconds to print the last lines

    follow(files, out, keep_going)
