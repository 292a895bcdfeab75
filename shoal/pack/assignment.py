"""The solver's working form of a plan: instances, each a list of devices of model indexes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shoal.pack.demand import Demands
from shoal.pack.families import charge

TOL = 1e-9
# A plan is valid within this relative margin of each limit: the exact MILP (HiGHS) meets its rows
# within its feasibility tolerance (~1e-7), so a device it fills can sum to 0.90000006 of a 0.9 limit.
REL_TOL = 1e-6


@dataclass
class Instance:
    type: int
    devices: list[list[int]]
    name: str | None = None  # kept from a previous plan when re-planning

    @property
    def empty(self) -> bool:
        return not any(self.devices)

    @property
    def n_models(self) -> int:
        return sum(len(dev) for dev in self.devices)


@dataclass
class Packing:
    instances: list[Instance] = field(default_factory=list)

    def cost(self, d: Demands) -> float:
        return float(sum(d.types[inst.type].price for inst in self.instances))

    def count(self, t: int) -> int:
        return sum(1 for inst in self.instances if inst.type == t)

    def copy(self) -> "Packing":
        return Packing([Instance(i.type, [list(dev) for dev in i.devices], i.name) for i in self.instances])

    def drop_empty(self) -> "Packing":
        self.instances = [i for i in self.instances if not i.empty]
        return self


def load(d: Demands, t: int, items: list[int]) -> tuple[float, float]:
    """(memory, compute) of a device of type ``t`` holding ``items``, as device fractions.

    Each family with a member here adds its shared bytes once.
    """
    if not items:
        return 0.0, 0.0
    idx = np.asarray(items)
    return float(d.mem[idx, t].sum()) + charge(d, t, items), float(d.comp[idx, t].sum())


def fits(d: Demands, t: int, items: list[int]) -> bool:
    if not items:
        return True
    m, c = load(d, t, items)
    return (bool(d.ok[np.asarray(items), t].all()) and m <= d.max_memory * (1 + REL_TOL) + TOL
            and c <= d.max_compute * (1 + REL_TOL) + TOL)


def violations(d: Demands, p: Packing) -> list[str]:
    """Every broken rule of a packing (empty list: valid)."""
    problems = []
    seen: dict[int, int] = {}
    for inst in p.instances:
        t = d.types[inst.type]
        if len(inst.devices) != t.devices:
            problems.append(f"instance of {t.name} has {len(inst.devices)} devices, not {t.devices}")
        for dev in inst.devices:
            for m in dev:
                seen[m] = seen.get(m, 0) + 1
            if not fits(d, inst.type, dev):
                problems.append(f"device on {t.name} over a limit: {load(d, inst.type, dev)}")
    for j, t in enumerate(d.types):
        if t.max_count is not None and p.count(j) > t.max_count:
            problems.append(f"{p.count(j)} instances of {t.name}, at most {t.max_count} exist")
    missing = [m for m in range(d.n) if seen.get(m, 0) != 1]
    if missing:
        problems.append(f"{len(missing)} models not placed exactly once, e.g. {d.ids[missing[0]]}")
    return problems
