"""Each model's demand on one device of each candidate type, from its measured profile.

Memory = the profile's resident bytes (fallback: artifact bytes) as a fraction of the
device's memory. Compute = expected requests/s x measured milliseconds per request at
the batch size the batcher will reach, divided by the device's speed: the fraction of
the device's time the model keeps busy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shoal.errors import UsageError
from shoal.pack.catalog import InstanceType
from shoal.pack.families import Families, build_families
from shoal.store.manifest import Manifest


@dataclass(frozen=True)
class ModelLoad:
    """What one model asks of whichever device it lands on."""

    id: str
    processor: str
    memory_bytes: int
    rps: float
    batch_size: int
    ms_per_request: float = 0.0
    threads: int = 1
    family: str | None = None  # family key when packed with another member (then memory_bytes is its own)
    shared_bytes: int = 0  # the family's shared bytes, paid once per device hosting a member


def choose_batch(latency: dict[int, float], max_batch: int, rps: float, max_delay_ms: float,
                 requested: int | None = None) -> int:
    """The batch size the dynamic batcher reaches on average.

    Requests arriving within one batching window (max delay + one forward at batch 1)
    share a forward, so about ``rps x window`` requests make a batch: take the largest
    profiled size not above that (and not above ``max_batch``). ``requested`` pins it.
    """
    sizes = sorted(b for b in latency if b <= max_batch) or [min(latency)]
    if requested is not None:
        return max((b for b in sizes if b <= requested), default=sizes[0])
    window_s = (max_delay_ms + latency[sizes[0]]) / 1000.0
    expected = max(1.0, rps * window_s)
    return max((b for b in sizes if b <= expected), default=sizes[0])


def model_load(manifest: Manifest, rps: float, batch_size: int | None = None) -> ModelLoad:
    p = manifest.profile
    if p is None or not p.latency_ms_p50:
        raise UsageError(f"model {manifest.id} has no measured profile: trace it with `shoal trace` before packing")
    if rps < 0:
        raise UsageError(f"request rate for {manifest.id} is negative ({rps})")
    b = choose_batch(p.latency_ms_p50, manifest.batching.max_batch_size, rps, manifest.batching.max_delay_ms,
                     batch_size)
    memory = p.resident_bytes or p.artifact_bytes
    return ModelLoad(id=manifest.id, processor=manifest.processor, memory_bytes=int(memory), rps=rps,
                     batch_size=b, ms_per_request=p.latency_ms_p50[b] / b, threads=max(1, p.threads))


def speed_on(load: ModelLoad, t: InstanceType) -> float | None:
    """How much faster one device of ``t`` runs the model than where it was measured.

    None: the artifact cannot run there (a Neuron or CUDA artifact is tied to its processor).
    """
    if load.processor == "cpu":
        if t.processor == "cpu":
            return t.speed * (t.vcpu / t.devices) / load.threads  # servers sharing few cores share their time
        return t.speed  # estimate until the model is traced for that processor
    if load.processor == t.processor:
        return 1.0  # measured on this processor
    return None


def is_estimate(load: ModelLoad, t: InstanceType) -> bool:
    return load.processor == "cpu" and t.processor != "cpu"


@dataclass
class Demands:
    """Demands as fractions of one device, one row per model, one column per type.

    ``mem[i, t]`` and ``comp[i, t]`` are fractions of one device of type ``t``;
    ``ok[i, t]`` (computed once) is False where the artifact cannot run or does not fit
    within the limits. ``families`` (None: no family) says which models share bytes paid once
    per device; their ``mem`` is then only what each member brings (``families.py``).
    """

    ids: list[str]
    types: list[InstanceType]
    mem: np.ndarray
    comp: np.ndarray
    compatible: np.ndarray
    max_memory: float
    max_compute: float
    families: Families | None = None
    ok: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        alone = self.mem if self.families is None else self.mem + self.families.alone()
        self.ok = self.compatible & (alone <= self.max_memory + 1e-12) & (self.comp <= self.max_compute + 1e-12)

    @property
    def n(self) -> int:
        return len(self.ids)

    def without_types(self, cols: list[int]) -> "Demands":
        """The same models with some types made unavailable (columns kept, so indexes match)."""
        compatible = self.compatible.copy()
        compatible[:, cols] = False
        return Demands(self.ids, self.types, self.mem, self.comp, compatible, self.max_memory, self.max_compute,
                       self.families)

    def subset(self, rows: list[int] | np.ndarray) -> "Demands":
        r = np.asarray(rows, dtype=int)
        return Demands([self.ids[i] for i in r], self.types, self.mem[r], self.comp[r], self.compatible[r],
                       self.max_memory, self.max_compute, self.families.subset(r) if self.families else None)

    def only_types(self, cols: list[int]) -> "Demands":
        c = np.asarray(cols, dtype=int)
        return Demands(self.ids, [self.types[j] for j in c], self.mem[:, c], self.comp[:, c],
                       self.compatible[:, c], self.max_memory, self.max_compute,
                       self.families.only_types(c) if self.families else None)


def build_demands(loads: list[ModelLoad], types: list[InstanceType], max_memory: float,
                  max_compute: float) -> Demands:
    n, k = len(loads), len(types)
    mem = np.zeros((n, k))
    comp = np.zeros((n, k))
    compatible = np.zeros((n, k), dtype=bool)
    for i, load in enumerate(loads):
        for j, t in enumerate(types):
            speed = speed_on(load, t)
            if speed is None:
                mem[i, j] = comp[i, j] = np.inf
                continue
            compatible[i, j] = True
            mem[i, j] = load.memory_bytes / t.device_memory_bytes
            comp[i, j] = load.rps * load.ms_per_request / 1000.0 / speed
    return Demands([x.id for x in loads], list(types), mem, comp, compatible, max_memory, max_compute,
                   build_families(loads, types))


def check_feasible(d: Demands, loads: list[ModelLoad]) -> None:
    """Raise naming the model and the tightest limit if some model fits on no device."""
    ok = d.ok
    for i in np.flatnonzero(~ok.any(axis=1)):
        load = loads[i]
        compat = np.flatnonzero(d.compatible[i])
        if compat.size == 0:
            kinds = ", ".join(sorted({t.processor for t in d.types}))
            raise UsageError(f"model {load.id} was traced for {load.processor} and cannot run on the candidate "
                             f"types ({kinds}): add a {load.processor} instance type or re-trace it")
        big = max(compat, key=lambda j: d.types[j].device_memory_bytes)
        t = d.types[big]
        alone = d.mem if d.families is None else d.mem + d.families.alone()
        mem_fit = compat[alone[i, compat] <= d.max_memory + 1e-12]
        if mem_fit.size == 0:
            raise UsageError(
                f"model {load.id} needs {(load.memory_bytes + load.shared_bytes) / 2**30:.2f} GiB but the largest "
                f"device, {t.accelerator} on {t.name}, allows {d.max_memory:.0%} of "
                f"{t.device_memory_bytes / 2**30:.2f} GiB = {d.max_memory * t.device_memory_bytes / 2**30:.2f} GiB "
                f"(--max-memory)")
        fast = min(mem_fit, key=lambda j: d.comp[i, j])
        raise UsageError(
            f"model {load.id} at {load.rps:g} req/s keeps {d.comp[i, fast]:.0%} of the fastest device busy "
            f"({d.types[fast].accelerator} on {d.types[fast].name}) but --max-compute is {d.max_compute:.0%}: "
            f"lower its request rate, raise --max-compute or add a faster instance type")
