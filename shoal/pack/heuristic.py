"""Fast constructive packings: best-fit decreasing per type, guided by the relaxation.

The relaxation (``bounds.py``) says which instance type each model should go to; this
module turns that into whole devices and instances. ``improve.py`` then polishes it.
"""

from __future__ import annotations

import numpy as np

from shoal.errors import UsageError
from shoal.pack.demand import Demands
from shoal.pack.packing import TOL, Instance, Packing


def normalized(d: Demands, items: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Item sizes on type ``t`` with each limit scaled to 1."""
    return d.mem[items, t] / d.max_memory, d.comp[items, t] / d.max_compute


def best_fit_decreasing(d: Demands, items: list[int] | np.ndarray, t: int, key: str = "max") -> list[list[int]]:
    """Vector best-fit decreasing: largest first, each into the open device it fills most.

    Sizes are scaled so each limit is 1; ``key`` orders by the larger dimension ("max")
    or by their sum ("sum"). The fullest-after-placement rule keeps slack concentrated
    in few devices, which the improvement step can then empty.
    """
    idx = np.asarray(items, dtype=int)
    if idx.size == 0:
        return []
    m, c = normalized(d, idx, t)
    size = np.maximum(m, c) if key == "max" else m + c
    order = np.argsort(-size, kind="stable")
    cap = 16
    lm, lc = np.zeros(cap), np.zeros(cap)
    bins: list[list[int]] = []
    for k in order:
        nb = len(bins)
        nm, nc = lm[:nb] + m[k], lc[:nb] + c[k]
        fit = (nm <= 1 + TOL) & (nc <= 1 + TOL)
        if fit.any():
            score = np.where(fit, (1 - nm) + (1 - nc), np.inf)
            b = int(np.argmin(score))
        else:
            b = nb
            bins.append([])
            if b >= cap:
                cap *= 2
                lm, lc = np.resize(lm, cap), np.resize(lc, cap)
                lm[b:], lc[b:] = 0.0, 0.0
        lm[b] += m[k]
        lc[b] += c[k]
        bins[b].append(int(idx[k]))
    return bins


def fill_devices(d: Demands, items: list[int] | np.ndarray, t: int, rule: str = "dot") -> list[list[int]]:
    """Device-at-a-time greedy for two binding dimensions (Panigrahy et al., 2011).

    Fill one device until nothing fits, each time taking the model that best matches the
    room left: largest dot product of its size with the room, each dimension weighted by
    its total demand ("dot"), or smallest distance between room and size ("l2"). Unlike
    best-fit decreasing it pairs compute-heavy with memory-heavy models.
    """
    idx = np.asarray(items, dtype=int)
    m, c = normalized(d, idx, t)
    left = np.ones(idx.size, dtype=bool)
    wm, wc = max(m.sum(), 1e-12), max(c.sum(), 1e-12)
    bins: list[list[int]] = []
    while left.any():
        rm, rc = 1.0, 1.0
        cur: list[int] = []
        while True:
            fit = left & (m <= rm + TOL) & (c <= rc + TOL)
            if not fit.any():
                break
            if rule == "dot":
                score = wm * m * rm + wc * c * rc
            else:
                score = -((rm - m) ** 2 + (rc - c) ** 2)
            k = int(np.argmax(np.where(fit, score, -np.inf)))
            left[k] = False
            rm, rc = rm - m[k], rc - c[k]
            cur.append(int(idx[k]))
        if not cur:  # cannot happen for models that fit a device; guard against a loop
            raise ValueError("a model larger than a device reached the packer")
        bins.append(cur)
    return bins


def pack_type(d: Demands, items: list[int] | np.ndarray, t: int) -> list[list[int]]:
    """The packing with the fewest devices among the greedy rules."""
    tries = [best_fit_decreasing(d, items, t, "max"), best_fit_decreasing(d, items, t, "sum")]
    if len(items) and d.comp[np.asarray(items), t].sum() / d.max_compute > 0.05 * len(tries[0]):
        tries += [fill_devices(d, items, t, "dot"), fill_devices(d, items, t, "l2")]
    return min(tries, key=len)


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
