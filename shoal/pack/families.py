"""Families in the pack stage: a family's shared bytes are charged once per device that hosts a member.

Why: a thousand fine-tunes of one MiniLM share ~45 MB of embedding tables and encoder matrices and
bring well under a megabyte each. Charging every member its full weights plans dozens of servers
for what one server holds (the server counts a shared tensor once: ``shoal/server/residency.py``).
So a member's memory demand is only its own tensors plus the per-member overhead, and each device
pays its families' shared bytes once. The packers place families, not models: a family's members
are cut into chunks that each fill at most one device (as few chunks as memory and compute allow),
the chunks are packed like models, and a family split over two devices pays its shared bytes twice.

A family counts only when at least two of the packed models belong to it: a lone model is packed
exactly as before (its full measured resident size), as the server serves it through its own graph.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np

from shoal.family.keys import family_key, own_bytes, shared_bytes
from shoal.server.residency import MEMBER_OVERHEAD_BYTES
from shoal.store.manifest import Manifest

if TYPE_CHECKING:
    from shoal.pack.catalog import InstanceType
    from shoal.pack.demand import Demands, ModelLoad

TOL = 1e-9


@dataclass
class Families:
    """Which family each model belongs to and what the family's shared bytes are on each type.

    ``of[i]`` is model i's family index (-1: none); ``shared[f, t]`` the family's shared bytes as a
    fraction of one device of type t.
    """

    of: np.ndarray
    keys: list[str]
    shared_bytes: list[int]
    shared: np.ndarray

    def subset(self, rows: np.ndarray) -> "Families":
        return Families(self.of[rows], self.keys, self.shared_bytes, self.shared)

    def only_types(self, cols: np.ndarray) -> "Families":
        return Families(self.of, self.keys, self.shared_bytes, self.shared[:, cols])

    def alone(self) -> np.ndarray:
        """(n, k): what each model adds to an empty device beyond its own demand (its family's shared bytes)."""
        pad = np.vstack([self.shared, np.zeros((1, self.shared.shape[1]))])
        return pad[self.of]

    def members(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = defaultdict(list)
        for i, f in enumerate(self.of):
            if f >= 0:
                out[int(f)].append(i)
        return out


def assign_families(manifests: Sequence[Manifest], loads: list["ModelLoad"]) -> list["ModelLoad"]:
    """``loads`` with members of families of two or more packed models charged their own bytes only."""
    keys = [family_key(m) for m in manifests]
    count: dict[str, int] = defaultdict(int)
    for k in keys:
        if k is not None:
            count[k] += 1
    out = []
    for m, load, key in zip(manifests, loads, keys):
        if key is None or count[key] < 2:
            out.append(load)
            continue
        out.append(replace(load, memory_bytes=own_bytes(m) + MEMBER_OVERHEAD_BYTES, family=key,
                           shared_bytes=shared_bytes(m)))
    return out


def build_families(loads: list["ModelLoad"], types: list["InstanceType"]) -> Families | None:
    """The demand matrices' family view (None when no packed model shares a family with another)."""
    keys: list[str] = []
    index: dict[str, int] = {}
    sizes: list[int] = []
    of = np.full(len(loads), -1, dtype=int)
    for i, load in enumerate(loads):
        if load.family is None:
            continue
        if load.family not in index:
            index[load.family] = len(keys)
            keys.append(load.family)
            sizes.append(load.shared_bytes)
        f = index[load.family]
        sizes[f] = max(sizes[f], load.shared_bytes)
        of[i] = f
    if not keys:
        return None
    dev = np.array([t.device_memory_bytes for t in types], dtype=float)
    return Families(of, keys, sizes, np.asarray(sizes, dtype=float)[:, None] / dev[None, :])


def charge(d: "Demands", t: int, items: Sequence[int]) -> float:
    """Shared memory (device fraction) a device of type ``t`` holding ``items`` pays: once per family."""
    fam = d.families
    if fam is None or len(items) == 0:
        return 0.0
    present = {int(f) for f in fam.of[np.asarray(items, dtype=int)] if f >= 0}
    return float(sum(fam.shared[f, t] for f in present))


def has_members(d: "Demands", items: np.ndarray) -> bool:
    return d.families is not None and bool((d.families.of[items] >= 0).any())


def unit_groups(d: "Demands", dev: list[int]) -> list[list[int]]:
    """A device's models as units that move together: each family's members on it, each other model."""
    fam = d.families
    if fam is None:
        return [[m] for m in dev]
    by: dict[int, list[int]] = defaultdict(list)
    out: list[list[int]] = []
    for m in dev:
        f = int(fam.of[m])
        if f < 0:
            out.append([m])
        else:
            by[f].append(m)
    return out + list(by.values())


@dataclass
class FamilyPlacement:
    """One family in a plan: its members, shared bytes and the servers (devices) that hold it."""

    key: str
    members: list[int]
    shared_bytes: int
    devices: list[tuple[int, int]]


def placements(d: "Demands", instances: Sequence[Sequence[Sequence[int]]]) -> list[FamilyPlacement]:
    """Per family, the (instance, device) slots hosting at least one member."""
    fam = d.families
    if fam is None:
        return []
    where: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for k, devices in enumerate(instances):
        for j, dev in enumerate(devices):
            for f in sorted({int(fam.of[m]) for m in dev if fam.of[m] >= 0}):
                where[f].append((k, j))
    members = fam.members()
    return [FamilyPlacement(fam.keys[f], members[f], fam.shared_bytes[f], where[f]) for f in sorted(members)]
