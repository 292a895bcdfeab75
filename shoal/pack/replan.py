"""Re-planning: start from the previous plan so running servers keep their models.

Every model still present stays on its server while that server's device meets the
limits under the new demands (a device now over a limit gives up its largest models
first). Removed models free room; new and displaced models go into spare room first,
then onto new instances. The solver may still empty a whole instance into others'
slack when that lowers the bill; ``moved_models`` counts every model whose server
changed.
"""

from __future__ import annotations

import numpy as np

from shoal.pack.assignment import TOL, Instance, Packing, fits
from shoal.pack.demand import Demands
from shoal.pack.heuristic import guided
from shoal.pack.improve import Slack
from shoal.pack.plan_file import Plan


def sticky_start(d: Demands, previous: Plan) -> Packing:
    """A valid packing of ``d`` that keeps as much of ``previous`` as the limits allow."""
    index = {m: i for i, m in enumerate(d.ids)}
    type_index = {t.name: j for j, t in enumerate(d.types)}
    kept: dict[str, Instance] = {}
    counts = [0] * len(d.types)
    for ip in previous.instances:
        t = type_index.get(ip.type)
        if t is None or ip.name in kept:
            continue
        cap = d.types[t].max_count
        if cap is not None and counts[t] >= cap:
            continue
        counts[t] += 1
        kept[ip.name] = Instance(t, [[] for _ in range(d.types[t].devices)], name=ip.name)
    placed: set[int] = set()
    for server in previous.servers:
        inst = kept.get(server.instance)
        if inst is None or server.device_index >= len(inst.devices):
            continue
        dev = inst.devices[server.device_index]
        for m in server.models:
            i = index.get(m)
            if i is not None and i not in placed and d.ok[i, inst.type]:
                dev.append(i)
                placed.add(i)
    for inst in kept.values():
        for dev in inst.devices:
            for i in _evict(d, inst.type, dev):
                dev.remove(i)
                placed.discard(i)
    p = Packing(list(kept.values()))
    pending = [i for i in range(d.n) if i not in placed]
    if not pending:
        return p
    slack = Slack(d, p, set())
    size = np.where(d.ok[pending], np.maximum(d.mem[pending] / d.max_memory, d.comp[pending] / d.max_compute), np.inf)
    leftover = []
    for pos in np.argsort(-size.min(axis=1), kind="stable"):
        i = pending[pos]
        b = slack.place(i)
        if b is None:
            leftover.append(i)
        else:
            k, j = slack.where[b]
            p.instances[k].devices[j].append(i)
    if leftover:
        sub = d.subset(leftover)
        sub_types_full = [t for t in range(len(d.types))
                          if d.types[t].max_count is not None and p.count(t) >= d.types[t].max_count]
        if sub_types_full:
            sub = sub.without_types(sub_types_full)
        fresh = guided(sub, None)
        for inst in fresh.instances:
            p.instances.append(Instance(inst.type, [[leftover[m] for m in dev] for dev in inst.devices]))
    return p


def _evict(d: Demands, t: int, dev: list[int]) -> list[int]:
    """Largest models to remove so the device meets both limits again."""
    if not dev:
        return []
    idx = np.asarray(dev)
    if d.families is not None:  # shared bytes are not additive: re-check the device after each removal
        left, out = list(dev), []
        for pos in np.argsort(-np.maximum(d.mem[idx, t] / d.max_memory, d.comp[idx, t] / d.max_compute)):
            if fits(d, t, left):
                break
            out.append(int(idx[pos]))
            left.remove(int(idx[pos]))
        return out
    mem, comp = d.mem[idx, t].sum(), d.comp[idx, t].sum()
    out = []
    for pos in np.argsort(-np.maximum(d.mem[idx, t] / d.max_memory, d.comp[idx, t] / d.max_compute)):
        if mem <= d.max_memory + TOL and comp <= d.max_compute + TOL:
            break
        out.append(int(idx[pos]))
        mem -= d.mem[idx[pos], t]
        comp -= d.comp[idx[pos], t]
    return out


def moved(previous: Plan, new: Plan) -> int:
    """Models present in both plans whose server changed (a renamed server counts as moved)."""
    return sum(1 for m, s in new.routing.items() if m in previous.routing and previous.routing[m] != s)
