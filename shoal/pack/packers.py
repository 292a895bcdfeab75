"""Pack a set of models onto the fewest devices of one type: three greedy rules.

No single rule wins everywhere, so :func:`pack_type` runs them and keeps the fewest
devices (each takes tens of milliseconds for 3,000 models):

- best-fit decreasing: the classic; good when one limit binds and items vary in size;
- spread over a fixed device count: worst-fit by the larger load, which mixes
  compute-heavy and memory-heavy models when both limits bind;
- minimum slack, device by device: good when only a few models fit a device and
  their sizes must be matched so little room is left over.

Sizes are scaled so each limit is 1.
"""

from __future__ import annotations

import math

import numpy as np

from shoal.pack.demand import Demands
from shoal.pack.packing import TOL

EPS = 1e-12


def normalized(d: Demands, items: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Item sizes on type ``t`` with each limit scaled to 1."""
    return d.mem[items, t] / d.max_memory, d.comp[items, t] / d.max_compute


def best_fit_decreasing(d: Demands, items: list[int] | np.ndarray, t: int) -> list[list[int]]:
    """Largest (by the larger dimension) first, each into the open device it fills most."""
    idx = np.asarray(items, dtype=int)
    if idx.size == 0:
        return []
    m, c = normalized(d, idx, t)
    order = np.argsort(-np.maximum(m, c), kind="stable")
    cap = 16
    lm, lc = np.zeros(cap), np.zeros(cap)
    bins: list[list[int]] = []
    for k in order:
        nb = len(bins)
        nm, nc = lm[:nb] + m[k], lc[:nb] + c[k]
        fit = (nm <= 1 + TOL) & (nc <= 1 + TOL)
        if fit.any():
            b = int(np.argmin(np.where(fit, (1 - nm) + (1 - nc), np.inf)))
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


def spread(d: Demands, items: list[int] | np.ndarray, t: int, count: int) -> list[list[int]]:
    """Deal models over ``count`` devices, largest first, each to the device left least loaded.

    Hot (compute-heavy) models come first and land one or two per device, then the
    cold ones fill the memory around them, so both limits fill together. Models that
    fit nowhere go to extra devices by best-fit decreasing.
    """
    idx = np.asarray(items, dtype=int)
    m, c = normalized(d, idx, t)
    lm, lc = np.zeros(count), np.zeros(count)
    bins: list[list[int]] = [[] for _ in range(count)]
    overflow = []
    for k in np.argsort(-np.maximum(m, c), kind="stable"):
        nm, nc = lm + m[k], lc + c[k]
        fit = (nm <= 1 + TOL) & (nc <= 1 + TOL)
        if not fit.any():
            overflow.append(int(idx[k]))
            continue
        b = int(np.argmin(np.where(fit, np.maximum(nm, nc), np.inf)))
        lm[b], lc[b] = nm[b], nc[b]
        bins[b].append(int(idx[k]))
    return [b for b in bins if b] + best_fit_decreasing(d, overflow, t)


def _best_triple(s: np.ndarray, rest: np.ndarray, room: float) -> list[int]:
    """Up to three positions of ``rest`` (sizes descending) filling ``room`` best.

    For every first choice a, the largest b that still fits, then the largest c:
    a vectorised two-step lookahead instead of a full subset search.
    """
    v = s[rest]
    n = v.size
    first = np.flatnonzero(v <= room + EPS)
    if first.size == 0:
        return []
    asc = v[::-1]
    padded = np.append(v, 0.0)
    left_a = room - v[first]
    b = n - 1 - (np.searchsorted(asc, left_a + EPS, side="right") - 1)
    b = np.where(b == first, b + 1, b)
    b_ok = b < n
    b = np.where(b_ok, b, n)
    left_b = left_a - padded[b]
    c = n - 1 - (np.searchsorted(asc, left_b + EPS, side="right") - 1)
    for _ in range(2):
        c = np.where((c == first) | (c == b), c + 1, c)
    c_ok = b_ok & (c < n)
    c = np.where(c_ok, c, n)
    total = v[first] + padded[b] + padded[c]
    k = int(np.argmax(total))
    out = [int(rest[first[k]])]
    if b_ok[k]:
        out.append(int(rest[b[k]]))
    if c_ok[k]:
        out.append(int(rest[c[k]]))
    return out


def min_slack(d: Demands, items: list[int] | np.ndarray, t: int) -> list[list[int]]:
    """Device by device: the largest model left, the best-fitting three to go with it, then
    greedy fill (after Fleszar and Hindi's minimum bin slack). One size per model, the
    larger of its two, so a device full in that size is within both limits."""
    idx = np.asarray(items, dtype=int)
    m, c = normalized(d, idx, t)
    size = np.maximum(m, c)
    order = np.argsort(-size, kind="stable")
    s, ids = size[order], idx[order]
    alive = np.ones(s.size, dtype=bool)
    bins: list[list[int]] = []
    while alive.any():
        live = np.flatnonzero(alive)
        room = 1.0 - s[live[0]]
        pick = [int(live[0])] + (_best_triple(s, live[1:], room) if live.size > 1 else [])
        alive[pick] = False
        room = 1.0 - float(s[pick].sum())
        while True:
            cand = np.flatnonzero(alive & (s <= room + TOL))
            if cand.size == 0:
                break
            pick.append(int(cand[0]))
            alive[cand[0]] = False
            room -= s[cand[0]]
        bins.append([int(ids[p]) for p in pick])
    return bins


def pack_type(d: Demands, items: list[int] | np.ndarray, t: int) -> list[list[int]]:
    """The packing with the fewest devices among the rules that suit these sizes."""
    idx = np.asarray(items, dtype=int)
    if idx.size == 0:
        return []
    tries = [best_fit_decreasing(d, idx, t)]
    m, c = normalized(d, idx, t)
    floor = max(1, math.ceil(max(m.sum(), c.sum()) - TOL))
    if floor < len(tries[0]):
        tries += [spread(d, idx, t, floor), spread(d, idx, t, floor + 1)]
    if idx.size / floor <= 12 and floor < min(map(len, tries)):
        tries.append(min_slack(d, idx, t))
    return min(tries, key=len)
