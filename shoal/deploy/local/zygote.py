"""A warm fork server: imports torch and the server once, then forks each server process from itself.

Why: a cold `shoal serve` spends seconds importing torch, transformers and FastAPI
(7-9 s on this shared 2-core machine), longer than the 5 s in which a dead server
must be back. A fork of an interpreter that already imported them is ready in well
under a second. Forking is safe here because this process never runs a forward,
never initialises CUDA and starts no threads (OpenBLAS's pool is kept to one).

Protocol (one JSON line each way, on stdin/stdout): the zygote prints ``ready`` once
its imports are done; each request ``{"argv", "env", "cores", "log", "reaper"}`` is
answered with ``{"pid": N}`` or ``{"error": "..."}``. A server is forked twice so it
is re-parented to ``reaper`` (the supervisor, a child subreaper), which then waits
on it like its own child and receives its exit status.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import runpy
import signal
import sys
import time
import traceback
import warnings
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def set_pdeathsig(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux; no-op elsewhere)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def set_name(name: str) -> None:
    """The name `ps -o comm` and `top` show (15 bytes), since a fork keeps the zygote's command line."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def preload(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an optional module missing only costs speed
            print(f"zygote: could not preload {name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


def _run(argv: list[str]) -> int:
    """Run ``python -m MOD ...`` / ``python -c CODE ...`` in this (forked) interpreter; else exec it."""
    if len(argv) >= 3 and argv[0] == sys.executable and argv[1] in ("-m", "-c"):
        try:
            if argv[1] == "-m":
                sys.argv = [argv[2], *argv[3:]]
                with warnings.catch_warnings():  # preloaded on purpose: runpy's "found in sys.modules" is noise
                    warnings.filterwarnings("ignore", ".*found in sys.modules", RuntimeWarning)
                    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
            else:
                sys.argv = ["-c", *argv[3:]]
                exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102
            return 0
        except SystemExit as exc:
            code = exc.code
            if code is None or isinstance(code, int):
                return code or 0
            print(code, file=sys.stderr)
            return 1
        except BaseException:
            traceback.print_exc()
            return 1
    os.execv(argv[0], argv)
    return 127  # not reached


def _become_server(req: dict[str, Any]) -> None:
    """In the grandchild: wait to be adopted by the reaper, pin, redirect output, run. Never returns."""
    code = 1
    try:
        reaper = req.get("reaper")
        deadline = time.monotonic() + 5
        while reaper and os.getppid() != reaper and time.monotonic() < deadline:
            time.sleep(0.001)
        set_pdeathsig()
        if reaper and os.getppid() != reaper:  # the supervisor is gone already
            os._exit(1)
        os.setpgid(0, 0)
        set_name(req.get("name") or "shoal-server")
        if req.get("cores") and hasattr(os, "sched_setaffinity"):
            wanted = set(req["cores"]) & os.sched_getaffinity(0)
            if wanted:
                os.sched_setaffinity(0, wanted)
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 1 << 16)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(req["env"])
        code = _run(req["argv"])
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def spawn(req: dict[str, Any]) -> dict[str, Any]:
    read_fd, write_fd = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(read_fd)
        try:
            grandchild = os.fork()
            if grandchild == 0:
                os.close(write_fd)
                _become_server(req)
            os.write(write_fd, str(grandchild).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as r:
        answer = r.read().strip()
    os.waitpid(middle, 0)
    return {"pid": int(answer)} if answer.isdigit() else {"error": "fork failed"}


def main() -> None:
    set_pdeathsig()  # the zygote never outlives the supervisor
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS pool would be a thread at fork time
    preload(sys.argv[1:])
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            answer = spawn(json.loads(line))
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
