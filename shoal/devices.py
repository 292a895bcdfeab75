"""The one vocabulary of hardware: processor names, device slots, usable cores, pinning.

Processors (``cpu``, ``gpu``, ``inf1``, ``inf2``) are what models are traced for and what
instances carry; a device slot (``--device``) is what one server process runs on. One
server process per device slot: the slot decides the environment the process starts
with (CUDA_VISIBLE_DEVICES, NEURON_RT_VISIBLE_CORES, thread counts) and, on CPU, which
cores it may run on. Every count of "cores this process may use" goes through
``usable_cores`` so the server, the local fleet and the CLI agree.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal, get_args

from shoal.errors import UsageError

Processor = Literal["cpu", "gpu", "inf1", "inf2"]
PROCESSORS: tuple[str, ...] = get_args(Processor)
NEURON_PROCESSORS: tuple[str, ...] = ("inf1", "inf2")
DEVICE_KIND = {"cpu": "cpu", "gpu": "cuda", "inf1": "neuron", "inf2": "neuron"}  # processor -> --device kind
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"

_CUDA = re.compile(r"^cuda:(\d+)$")
_NEURON = re.compile(r"^neuron:(\d+)(?:-(\d+))?$")
_CPU = re.compile(r"^cpu(?::(\d+)(?:-(\d+))?)?$")


@dataclass(frozen=True)
class Device:
    """A parsed --device: cpu | cpu:A-B (a core slice) | cuda:N | neuron:A-B."""

    kind: str  # cpu | cuda | neuron
    first: int | None = None
    last: int | None = None

    @property
    def torch_device(self) -> str:
        # Inside a process pinned with CUDA_VISIBLE_DEVICES=N the GPU is always cuda:0.
        return "cuda:0" if self.kind == "cuda" else "cpu"

    @property
    def cores(self) -> list[int] | None:
        if self.kind != "cpu" or self.first is None:
            return None
        return list(range(self.first, (self.last if self.last is not None else self.first) + 1))

    def __str__(self) -> str:
        if self.first is None:
            return self.kind
        if self.kind == "cuda":
            return f"cuda:{self.first}"
        return f"{self.kind}:{self.first}" + (f"-{self.last}" if self.last not in (None, self.first) else "")


def parse_device(text: str) -> Device:
    text = text.strip().lower()
    if m := _CUDA.match(text):
        return Device("cuda", int(m.group(1)), int(m.group(1)))
    if m := _NEURON.match(text):
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else first
        if last < first:
            raise UsageError(f"device {text!r}: core range must be ascending")
        return Device("neuron", first, last)
    if m := _CPU.match(text):
        if m.group(1) is None:
            return Device("cpu")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else first
        if last < first:
            raise UsageError(f"device {text!r}: core range must be ascending")
        return Device("cpu", first, last)
    raise UsageError(f"unknown device {text!r}: use cpu, cpu:A-B, cuda:N or neuron:A-B")


def cgroup_cpu_quota(path: str = CGROUP_CPU_MAX) -> int | None:
    """Whole CPUs a cgroup v2 quota allows (rounded up), or None without a quota."""
    try:
        limit, period = open(path).read().split()[:2]
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return max(1, int(-(-int(limit) // int(period))))


def usable_cores(cgroup_path: str = CGROUP_CPU_MAX) -> int:
    """Cores this process may use: its affinity mask, capped by a cgroup CPU quota.

    ``os.cpu_count`` counts the machine: under ``taskset`` or a Kubernetes CPU limit (which
    leaves every node core in the affinity mask) it overcounts and threads oversubscribe.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_path)
    return max(1, min(cores, quota)) if quota else cores


def cpu_slices(workers: int, cores: int | None = None) -> list[Device]:
    """Split this machine's cores into ``workers`` contiguous slices (one server process each)."""
    total = cores or usable_cores()
    if workers < 1 or workers > total:
        raise UsageError(f"--workers {workers}: must be between 1 and the {total} cores of this machine")
    if workers == 1:
        return [Device("cpu")]
    size, extra = divmod(total, workers)
    slices, start = [], 0
    for i in range(workers):
        n = size + (1 if i < extra else 0)
        slices.append(Device("cpu", start, start + n - 1))
        start += n
    return slices


def process_env(device: Device, threads: int | None = None) -> dict[str, str]:
    """Environment variables that pin a server process to ``device``."""
    env: dict[str, str] = {}
    if device.kind == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = str(device.first)
    elif device.kind == "neuron":
        env["NEURON_RT_VISIBLE_CORES"] = f"{device.first}-{device.last}" if device.last != device.first else str(
            device.first)
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
    n = threads or (len(device.cores) if device.cores else usable_cores())
    env["OMP_NUM_THREADS"] = str(n)
    env["MKL_NUM_THREADS"] = str(n)
    env["SHOAL_DEVICE"] = str(device)
    return env


def pin_current_process(device: Device) -> None:
    """Restrict this process to its core slice (Linux); a no-op for whole-machine CPU and accelerators."""
    if device.cores and hasattr(os, "sched_setaffinity"):
        available = os.sched_getaffinity(0)
        wanted = {c for c in device.cores if c in available}
        if not wanted:
            raise UsageError(f"device {device}: none of cores {device.cores} is available to this process")
        os.sched_setaffinity(0, wanted)
