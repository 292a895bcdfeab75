"""Whole plans from the relaxation: which type each model goes to, then devices and instances.

The relaxation (``bounds.py``) says which instance type each model should go to;
``greedy.py`` turns each type's share into devices; this module groups devices into
instances and respects types that exist in limited number (``local``).
``improve.py`` then polishes the result.
"""

from __future__ import annotations

import numpy as np

from shoal.errors import UsageError
from shoal.pack.assignment import Instance, Packing
from shoal.pack.demand import Demands
from shoal.pack.greedy import pack_type


def into_instances(d: Demands, t: int, bins: list[list[int]]) -> list[Instance]:
    """Group devices into instances of ``t`` (the last one may have empty devices)."""
    per = d.types[t].devices
    out = []
    for start in range(0, len(bins), per):
        chunk = [list(b) for b in bins[start:start + per]]
        chunk += [[] for _ in range(per - len(chunk))]
        out.append(Instance(t, chunk))
    return out


def single_type(d: Demands, t: int) -> Packing | None:
    """Every model on type ``t`` alone (None if some model does not fit there)."""
    if not d.ok[:, t].all():
        return None
    p = Packing(into_instances(d, t, pack_type(d, np.arange(d.n), t)))
    cap = d.types[t].max_count
    return p if cap is None or len(p.instances) <= cap else None


def cheapest_rate(d: Demands) -> np.ndarray:
    """Per model, the type with the lowest price x binding size: the fallback choice."""
    per_device = np.array([t.price / t.devices for t in d.types])
    size = np.maximum(d.mem / d.max_memory, d.comp / d.max_compute)
    rate = np.where(d.ok, size * per_device + 1e-12 * size, np.inf)
    return np.argmin(rate, axis=1)


def guided(d: Demands, x: np.ndarray | None) -> Packing:
    """Put each model on the type the relaxation gives most of it, then pack each type.

    Types with a limited count (``local``) keep their fullest instances; the models of
    the rest move to their next choice.
    """
    score = np.where(d.ok, x if x is not None else 0.0, -1.0)
    fallback = cheapest_rate(d)
    choice = np.where(score.max(axis=1) > 1e-6, np.argmax(score, axis=1), fallback)
    banned = np.zeros_like(d.ok)
    instances: list[Instance] = []
    pending = np.arange(d.n)
    for _ in range(len(d.types) + 1):
        spill: list[int] = []
        for t in range(len(d.types)):
            items = pending[choice[pending] == t]
            if items.size == 0:
                continue
            insts = into_instances(d, t, pack_type(d, items, t))
            cap = d.types[t].max_count
            if cap is not None and len(insts) > cap:
                insts.sort(key=lambda i: -i.n_models)
                for extra in insts[cap:]:
                    spill += [m for dev in extra.devices for m in dev]
                insts = insts[:cap]
                banned[:, t] = True
            instances += insts
        if not spill:
            return Packing(instances)
        pending = np.asarray(spill)
        allowed = d.ok & ~banned
        if not allowed[pending].any(axis=1).all():
            raise UsageError("the models do not fit on the limited instance types (e.g. local): "
                             "add servers with --servers, add an instance type, or pack fewer models")
        rate = np.where(allowed, score + 1.0, -np.inf)
        choice = choice.copy()
        choice[pending] = np.argmax(rate[pending], axis=1)
    raise UsageError("could not place every model within the instance count limits")
