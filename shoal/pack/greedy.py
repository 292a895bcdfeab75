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

from shoal.pack.assignment import TOL
from shoal.pack.demand import Demands
from shoal.pack.families import has_members
from shoal.pack.family_groups import chunk

EPS = 1e-12
CHUNK_SCALES = (1.0, 0.5, 0.25, 0.125)  # family groups: whole devices, or pieces that mix with other models


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


def _best_triple(p: np.ndarray, q: np.ndarray, rest: np.ndarray, room_p: float, room_q: float) -> list[int]:
    """Up to three positions of ``rest`` (``p`` descending) filling ``room_p`` best, within ``room_q``.

    For every first choice a, the largest b that still fits in ``p``, then the largest
    c: a vectorised two-step lookahead instead of a full subset search. The secondary
    size ``q`` is checked on the result (dropping c, then b, when it does not fit).
    """
    v, w = p[rest], q[rest]
    n = v.size
    first = np.flatnonzero((v <= room_p + EPS) & (w <= room_q + EPS))
    if first.size == 0:
        return []
    asc = v[::-1]
    pv, pw = np.append(v, 0.0), np.append(w, 0.0)
    left_a = room_p - v[first]
    b = n - 1 - (np.searchsorted(asc, left_a + EPS, side="right") - 1)
    b = np.where(b == first, b + 1, b)
    b = np.where(b < n, b, n)
    c = n - 1 - (np.searchsorted(asc, left_a - pv[b] + EPS, side="right") - 1)
    for _ in range(2):
        c = np.where((c == first) | (c == b), c + 1, c)
    c = np.where((c < n) & (b < n), c, n)
    q_ab = w[first] + pw[b]
    keep_b = q_ab <= room_q + EPS
    keep_c = keep_b & (q_ab + pw[c] <= room_q + EPS)
    total = v[first] + np.where(keep_b, pv[b], 0.0) + np.where(keep_c, pv[c], 0.0)
    k = int(np.argmax(total))
    out = [int(rest[first[k]])]
    if keep_b[k] and b[k] < n:
        out.append(int(rest[b[k]]))
    if keep_c[k] and c[k] < n:
        out.append(int(rest[c[k]]))
    return out


def _fill(p: np.ndarray, q: np.ndarray, alive: np.ndarray, pick: list[int], room_p: float, room_q: float,
          stop_below: float = 0.0) -> tuple[float, float]:
    """Add the largest fitting models to ``pick`` until nothing fits or the room drops below
    ``stop_below`` (left for the lookahead to match exactly); returns the room left."""
    while room_p > stop_below:
        cand = np.flatnonzero(alive & (p <= room_p + TOL) & (q <= room_q + TOL))
        if cand.size == 0:
            break
        k = int(cand[0])
        pick.append(k)
        alive[k] = False
        room_p -= p[k]
        room_q -= q[k]
    return room_p, room_q


def min_slack(d: Demands, items: list[int] | np.ndarray, t: int) -> list[list[int]]:
    """Device by device: a seed model, the largest that fit, then the three that fill the
    last room best (after Fleszar and Hindi's minimum bin slack).

    The seed is the largest model left by its larger size, so hot models start devices
    and cold ones fill the memory around them; the lookahead matches sizes in the
    dimension with more total demand and checks the other.
    """
    idx = np.asarray(items, dtype=int)
    m, c = normalized(d, idx, t)
    primary, secondary = (m, c) if m.sum() >= c.sum() else (c, m)
    order = np.argsort(-primary, kind="stable")
    p, q, ids = primary[order], secondary[order], idx[order]
    key = np.maximum(p, q)
    alive = np.ones(p.size, dtype=bool)
    bins: list[list[int]] = []
    while alive.any():
        live = np.flatnonzero(alive)
        seed = int(live[np.argmax(key[live])])
        alive[seed] = False
        pick = [seed]
        typical = float(np.median(p[alive])) if alive.any() else 0.0
        room_p, room_q = _fill(p, q, alive, pick, 1.0 - p[seed], 1.0 - q[seed], stop_below=3.5 * typical)
        tail = _best_triple(p, q, np.flatnonzero(alive), room_p, room_q)
        alive[tail] = False
        pick += tail
        _fill(p, q, alive, pick, room_p - float(p[tail].sum()), room_q - float(q[tail].sum()))
        bins.append([int(ids[k]) for k in pick])
    return bins


def pack_type(d: Demands, items: list[int] | np.ndarray, t: int) -> list[list[int]]:
    """The packing with the fewest devices among the rules that suit these sizes.

    Family members are first cut into groups (``family_groups.chunk``) that move as one item, so a
    family lands on few devices: groups of a whole device, or of a half, quarter or eighth of one
    that can fill the room other models leave; the cut giving the fewest devices wins.
    """
    idx = np.asarray(items, dtype=int)
    if idx.size == 0:
        return []
    if has_members(d, idx):
        tries = []
        for scale in CHUNK_SCALES:
            groups = chunk(d, idx, t, scale)
            tries.append(groups.expand(pack_type(groups.demands, np.arange(groups.demands.n), 0)))
        return min(tries, key=len)
    tries = [best_fit_decreasing(d, idx, t)]
    m, c = normalized(d, idx, t)
    floor = max(1, math.ceil(max(m.sum(), c.sum()) - TOL))
    if floor < len(tries[0]):
        tries += [spread(d, idx, t, floor), spread(d, idx, t, floor + 1)]
    if floor < min(map(len, tries)):
        tries.append(min_slack(d, idx, t))
    return min(tries, key=len)
