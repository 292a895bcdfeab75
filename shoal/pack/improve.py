"""Improvement moves on a valid packing: empty expensive instances into others' slack.

The move: take one or two lightly loaded instances, put their models into the spare
room of the remaining devices (best fit), pack what is left onto the cheapest new
instances, and keep the result only if the bill drops. Paid-for devices that sit empty
(the tail of a 16-NeuronCore instance) count as spare room, which is how a mixed plan
fills them with models from other types.
"""

from __future__ import annotations

import time

import numpy as np

from shoal.pack.assignment import TOL, Instance, Packing, load
from shoal.pack.demand import Demands
from shoal.pack.families import unit_groups
from shoal.pack.greedy import pack_type
from shoal.pack.heuristic import into_instances


class Slack:
    """Spare room of every device outside the excluded instances, as flat arrays.

    With families, each device also remembers which families it holds: a member joining a device
    that already holds its family adds only its own bytes.
    """

    def __init__(self, d: Demands, p: Packing, exclude: set[int]) -> None:
        self.d = d
        self.where: list[tuple[int, int]] = []
        types, mem, comp = [], [], []
        self.held: list[set[int]] = []
        for k, inst in enumerate(p.instances):
            if k in exclude:
                continue
            for j, dev in enumerate(inst.devices):
                idx = np.asarray(dev, dtype=int)
                self.where.append((k, j))
                types.append(inst.type)
                if d.families is None:
                    mem.append(d.mem[idx, inst.type].sum() if dev else 0.0)
                else:
                    mem.append(load(d, inst.type, dev)[0])
                    self.held.append({int(f) for f in d.families.of[idx] if f >= 0} if dev else set())
                comp.append(d.comp[idx, inst.type].sum() if dev else 0.0)
        self.type = np.asarray(types, dtype=int)
        self.mem = np.asarray(mem, dtype=float)
        self.comp = np.asarray(comp, dtype=float)

    def _shared(self, item: int) -> np.ndarray | float:
        """What ``item``'s family adds to each device: its shared bytes where it is not held yet."""
        fam = self.d.families
        if fam is None or fam.of[item] < 0:
            return 0.0
        f = int(fam.of[item])
        missing = np.array([f not in h for h in self.held], dtype=bool)
        return np.where(missing, fam.shared[f][self.type], 0.0)

    def place(self, item: int) -> int | None:
        """Best-fit device for ``item`` (fullest after placement), reserved; None if none."""
        if self.type.size == 0:
            return None
        d = self.d
        nm = self.mem + d.mem[item][self.type] + self._shared(item)
        nc = self.comp + d.comp[item][self.type]
        fit = d.ok[item][self.type] & (nm <= d.max_memory + TOL) & (nc <= d.max_compute + TOL)
        if not fit.any():
            return None
        score = np.where(fit, (d.max_memory - nm) / d.max_memory + (d.max_compute - nc) / d.max_compute, np.inf)
        b = int(np.argmin(score))
        self.mem[b], self.comp[b] = nm[b], nc[b]
        if d.families is not None and d.families.of[item] >= 0:
            self.held[b].add(int(d.families.of[item]))
        return b


def fill(d: Demands, inst: Instance) -> float:
    """Average binding-dimension use of an instance's devices (0..1)."""
    total = 0.0
    for dev in inst.devices:
        if dev:
            m, c = load(d, inst.type, dev)
            total += max(m / d.max_memory, c / d.max_compute)
    return total / len(inst.devices)


def cheapest_new(d: Demands, items: list[int], counts: list[int]) -> list[Instance] | None:
    """Cheapest single-type set of new instances for ``items`` (respecting count limits)."""
    best: list[Instance] | None = None
    best_cost = np.inf
    for t, typ in enumerate(d.types):
        if not d.ok[items, t].all():
            continue
        insts = into_instances(d, t, pack_type(d, items, t))
        if typ.max_count is not None and counts[t] + len(insts) > typ.max_count:
            continue
        cost = len(insts) * typ.price
        if cost < best_cost - 1e-12 or (abs(cost - best_cost) <= 1e-12 and best and len(insts) < len(best)):
            best, best_cost = insts, cost
    return best


def try_repack(d: Demands, p: Packing, chosen: list[int]) -> Packing | None:
    """``p`` with the ``chosen`` instances emptied and replaced, if that lowers the cost."""
    items = [m for k in chosen for dev in p.instances[k].devices for m in dev]
    slack = Slack(d, p, set(chosen))
    size = np.array([max(d.mem[m, p.instances[k].type] / d.max_memory, d.comp[m, p.instances[k].type] / d.max_compute)
                     for k in chosen for dev in p.instances[k].devices for m in dev])
    moves: dict[int, int] = {}
    leftover: list[int] = []
    for pos in np.argsort(-size, kind="stable"):
        m = items[pos]
        b = slack.place(m)
        if b is None:
            leftover.append(m)
        else:
            moves[m] = b
    old_cost = sum(d.types[p.instances[k].type].price for k in chosen)
    new: list[Instance] = []
    if leftover:
        counts = [p.count(t) - sum(1 for k in chosen if p.instances[k].type == t) for t in range(len(d.types))]
        got = cheapest_new(d, leftover, counts)
        if got is None:
            return None
        new = got
    new_cost = sum(d.types[i.type].price for i in new)
    cheaper = new_cost < old_cost - 1e-9
    fewer_for_free = abs(new_cost - old_cost) <= 1e-9 and len(new) < len(chosen)  # zero-priced types
    if not (cheaper or fewer_for_free):
        return None
    out = p.copy()
    for m, b in moves.items():
        k, j = slack.where[b]
        out.instances[k].devices[j].append(m)
    keep = [inst for k, inst in enumerate(out.instances) if k not in set(chosen)]
    out.instances = keep + new
    return out


def improve(d: Demands, p: Packing, deadline: float, width: int = 12) -> Packing:
    """Repeat emptying moves on the lightest instances until none pays or time is up."""
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        order = sorted(range(len(p.instances)), key=lambda k: (fill(d, p.instances[k]),
                                                               -d.types[p.instances[k].type].price))
        light = order[:width]
        candidates = [[k] for k in light] + [[a, b] for i, a in enumerate(light[:6]) for b in light[i + 1:6]]
        for chosen in candidates:
            if time.monotonic() >= deadline:
                break
            better = try_repack(d, p, chosen)
            if better is not None:
                p = better
                improved = True
                break
    return p


def balance(d: Demands, p: Packing) -> Packing:
    """Spread each instance's models over all its devices (same cost, less contention).

    Largest first onto the device that stays least loaded; an instance keeps its old
    layout if the spread does not fit, and instances kept from a previous plan are not
    touched (their models are already loaded there).
    """
    out = p.copy()
    for inst in out.instances:
        if inst.name is not None:  # a running instance from the previous plan: leave it be
            continue
        t = inst.type
        units = [u for dev in inst.devices for u in unit_groups(d, dev)]  # a family's members stay together
        if len(inst.devices) == 1 or not units:
            continue
        sizes = np.array([load(d, t, u) for u in units])
        m, c = sizes[:, 0] / d.max_memory, sizes[:, 1] / d.max_compute
        lm, lc = np.zeros(len(inst.devices)), np.zeros(len(inst.devices))
        devices: list[list[int]] = [[] for _ in inst.devices]
        for k in np.argsort(-np.maximum(m, c), kind="stable"):
            nm, nc = lm + m[k], lc + c[k]
            fit = (nm <= 1 + TOL) & (nc <= 1 + TOL)
            if not fit.any():
                break
            b = int(np.argmin(np.where(fit, np.maximum(nm, nc), np.inf)))
            lm[b], lc[b] = nm[b], nc[b]
            devices[b] += units[k]
        else:
            inst.devices = devices
    return out
