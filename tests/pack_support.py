"""Helpers for the pack tests: hand-made instance types, demand matrices, manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shoal.pack.assignment import Packing, violations
from shoal.pack.catalog import GIB, InstanceType
from shoal.pack.demand import Demands, ModelLoad
from shoal.store.local import LocalStore
from shoal.store.manifest import Batching, Manifest, Profile, describe_files


def itype(name: str, devices: int = 1, price: float = 1.0, max_count: int | None = None) -> InstanceType:
    return InstanceType(name=name, processor="cpu", accelerator="test", devices=devices, vcpu=2 * devices,
                        ram_bytes=devices * GIB, device_memory_bytes=GIB, price=price, speed=1.0,
                        max_count=max_count)


def demands(mem: list[float] | np.ndarray, comp: list[float] | np.ndarray | None, types: list[InstanceType],
            max_memory: float = 0.9, max_compute: float = 0.9) -> Demands:
    """Same fractions on every type (one column per type)."""
    m = np.asarray(mem, dtype=float)
    c = np.zeros_like(m) if comp is None else np.asarray(comp, dtype=float)
    k = len(types)
    return Demands([f"m{i}" for i in range(m.size)], types, np.repeat(m[:, None], k, axis=1),
                   np.repeat(c[:, None], k, axis=1), np.ones((m.size, k), dtype=bool), max_memory, max_compute)


def loads_for(d: Demands) -> list[ModelLoad]:
    """ModelLoads matching a hand-made demand matrix (memory of the first type's device)."""
    return [ModelLoad(id=m, processor="cpu", memory_bytes=int(d.mem[i, 0] * d.types[0].device_memory_bytes),
                      rps=0.0, batch_size=1) for i, m in enumerate(d.ids)]


def assert_valid(d: Demands, p: Packing) -> None:
    problems = violations(d, p)
    assert not problems, problems


def manifest(model_id: str, resident_mib: float = 100, b1_ms: float = 20.0, processor: str = "cpu") -> Manifest:
    b = int(resident_mib * 2**20)
    profile = Profile(param_bytes=b // 2, artifact_bytes=b // 2, resident_bytes=b,
                      latency_ms_p50={1: b1_ms, 4: b1_ms * 3.2}, threads=2, measured_on="test")
    return Manifest(id=model_id, kind="text", task="classification", processor=processor,  # type: ignore[arg-type]
                    tokenizer=None, profile=profile, batching=Batching(max_batch_size=4, max_delay_ms=2.0))


def push(store: LocalStore, tmp: Path, m: Manifest) -> None:
    """Put a model with a dummy artifact into the store (pack only reads manifests)."""
    folder = tmp / f"src-{m.id}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / m.artifact).write_bytes(b"not a real model: " + m.id.encode())
    m.files = describe_files(folder, [m.artifact])
    store.push(folder, m)
