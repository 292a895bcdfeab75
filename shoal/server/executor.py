"""Device setup and the executor threads that run forward passes.

One device per process. Its forwards run on ``executors`` threads, each with its own
torch intra-op thread count (under OpenMP the count is per calling thread), so
``--executors 2 --threads 1`` gives two concurrent single-threaded forwards and
``--executors 1 --threads 2`` one forward using both cores. Models share the
device by taking turns on these threads (time-slicing).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from shoal.devices import Device, usable_cores
from shoal.errors import MissingDependencyError
from shoal.server.handlers.base import LoadContext


def check_device(device: Device) -> None:
    """Fail with one line when the device this process is pinned to does not exist here."""
    if device.kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise MissingDependencyError(f"device {device}: no CUDA device is visible to this process "
                                         "(is this a GPU machine with the CUDA build of torch?)")
    elif device.kind == "neuron":
        if not any(importlib.util.find_spec(m) for m in ("torch_neuron", "torch_neuronx")):
            raise MissingDependencyError(f"device {device}: needs torch-neuron (inf1) or torch-neuronx (inf2), "
                                         "which are not installed; run on an Inferentia instance with the Neuron SDK")


def device_cores(device: Device) -> int:
    """Cores this process may use: its slice, else ``usable_cores`` (affinity capped by a cgroup quota)."""
    return len(device.cores) if device.cores else usable_cores()


def executor_layout(device: Device, executors: int | None, threads: int | None) -> tuple[int, int]:
    """(executors, torch threads each). Default on CPU: one single-threaded executor per core.

    With many models little batching happens, and on a shared or busy CPU a multi-threaded
    forward stalls at every OpenMP barrier whenever one of its threads is preempted (by the
    event loop, the tokenizer or a neighbour); independent single-threaded forwards do not.
    Measured in docs/BENCHMARKS.md (## server). Accelerators take one executor (one stream).
    """
    cores = device_cores(device)
    if executors is None:
        executors = cores // (threads or 1) if device.kind == "cpu" else 1
    executors = max(1, executors)
    return executors, threads or max(1, cores // executors)


class DeviceExecutor:
    """``executors`` threads that run batches for every model on this device."""

    def __init__(self, device: Device, executors: int, threads: int) -> None:
        self.device = device
        self.executors = max(1, executors)
        self.threads = threads
        self.context = LoadContext(torch_device=device.torch_device, device_kind=device.kind)
        self._pool = ThreadPoolExecutor(self.executors, thread_name_prefix="shoal-exec",
                                        initializer=_set_torch_threads, initargs=(threads,))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._pool.submit(fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


LOADER_NICE = 10  # a niced thread gets ~1/10 of a core an un-niced forward competes for


def loader_pool(workers: int) -> ThreadPoolExecutor:
    """Threads that fetch, verify and load artifacts, so a load never blocks the event loop or a forward.

    ``workers`` load slots (the registry's LoadQueue) plus two threads for store look-ups, so a
    manifest read never waits behind swap-ins. They run niced: loads never starve inference.
    """
    return ThreadPoolExecutor(max(1, workers) + 2, thread_name_prefix="shoal-load", initializer=_loader_thread)


def _loader_thread() -> None:
    _set_torch_threads(1)
    try:  # Linux: a thread is a task with its own nice value
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICE)
    except (AttributeError, OSError):
        pass


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
