"""A proven lower bound on the cost of any plan, and the fractional plan behind it.

The relaxation lets a model be split across instance types and device boundaries, but
keeps instance counts integer. Capacity rows alone are weak when a model takes a fifth
of a device (five fractional models fill a device no real packing can), so each type
also gets rows built from *dual feasible functions* (Fekete & Schepers): maps f of item
sizes with ``sum(s) <= 1 => sum(f(s)) <= 1``. Any real packing satisfies them, so the
bound stays valid while the rounding effect of large models is charged for.

Families (shared bytes paid once per device hosting a member) add one variable y[f, t]
per family and type, at least every member's share x[i, t] on that type: in a real plan
y is the number of devices of t holding the family. The family's shared bytes enter the
memory rows (and their DFF images, as one more item on each such device) through y.
A device holding f carries at most its compute limit of f's compute and its memory limit less
f's shared bytes of f's own bytes, so y is also at least f's demand on t over those.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from shoal.pack.demand import Demands

U_KS = tuple(range(1, 11))          # u^(k) for k = 1..10
EPSILONS = (0.1, 0.2, 0.3, 0.4)     # f_eps
TOL = 1e-9
INTEGER_COUNTS_MAX_VARS = 2000  # HiGHS branching on counts over more columns can overrun its time limit


def _options(time_limit: float) -> dict[str, object]:
    """HiGHS options for every solve here. Presolve is off: on a 4-model case with a 6e-8
    demand, HiGHS's MIP presolve (SciPy 1.17.1) returned a wrong "optimal" (see exact.py
    and tests/test_pack_solver.py), and a bound must never be wrong; without presolve
    the 3,000-model relaxation still solves in about 0.1 s."""
    return {"time_limit": time_limit, "disp": False, "presolve": False}


def dff_u(x: np.ndarray, k: int) -> np.ndarray:
    """u^(k)(x) = x if (k+1)x is an integer else floor((k+1)x)/k, rounded to stay valid."""
    y = (k + 1) * x
    near = np.abs(y - np.rint(y)) < 1e-9
    return np.where(near, x, np.floor(y - 1e-9) / k)


def dff_eps(x: np.ndarray, eps: float) -> np.ndarray:
    """1 above 1-eps, 0 below eps, x between: big items cannot share a bin."""
    return np.where(x > 1 - eps + TOL, 1.0, np.where(x < eps, 0.0, x))


def size_functions(s: np.ndarray) -> list[np.ndarray]:
    """Identity plus every DFF that raises some item's size (the others are dominated)."""
    out = [s]
    for f in [dff_u(s, k) for k in U_KS] + [dff_eps(s, e) for e in EPSILONS]:
        if (f > s + 1e-12).any():
            out.append(f)
    return out


@dataclass
class Relaxation:
    """The relaxation's matrices, kept to re-solve with some instance counts pinned."""

    c: np.ndarray
    cons: LinearConstraint
    upper: np.ndarray
    pairs_i: np.ndarray
    pairs_t: np.ndarray
    shape: tuple[int, int]

    def solve(self, pinned: dict[int, int], time_limit: float = 2.0) -> np.ndarray | None:
        """Fractional assignment (n x T) with ``pinned`` types bought exactly that many times.

        Rounding a type bought 0.4 times up to 1 makes its capacity free: re-solving with
        the count pinned moves the models that profit most onto it.
        """
        n, k = self.shape
        nx = self.pairs_i.size
        lo, hi = np.zeros(self.upper.size), self.upper.copy()
        for t, count in pinned.items():
            lo[nx + t] = hi[nx + t] = count
        res = milp(self.c, bounds=Bounds(lo, hi), constraints=self.cons, options=_options(time_limit))
        if res.x is None:
            return None
        x = np.zeros((n, k))
        x[self.pairs_i, self.pairs_t] = res.x[:nx]
        return x


@dataclass
class Bound:
    value: float
    x: np.ndarray | None  # n x T fractional assignment (rows sum to 1), None if not solved
    counts: np.ndarray | None  # instances per type in the relaxation
    proven: bool
    feasible: bool = True
    tightest: str = ""
    relaxation: Relaxation | None = None


def lower_bound(d: Demands, time_limit: float = 5.0) -> Bound:
    """Solve the relaxation with HiGHS; its dual bound is valid even if time runs out."""
    n, k = d.mem.shape
    ok = d.ok
    pairs_i, pairs_t = np.nonzero(ok)
    nx = pairs_i.size
    prices = np.array([t.price for t in d.types])
    devs = np.array([t.devices for t in d.types], dtype=float)

    rows, cols, vals = [pairs_i], [np.arange(nx)], [np.ones(nx)]
    lo, hi = [np.ones(n)], [np.ones(n)]
    r = n
    fam_of = d.families.of[pairs_i] if d.families is not None else np.full(nx, -1)
    y_col: dict[tuple[int, int], int] = {}  # (family, type) -> column, after the x and count columns
    for v in np.flatnonzero(fam_of >= 0):
        key = (int(fam_of[v]), int(pairs_t[v]))
        col = y_col.setdefault(key, nx + k + len(y_col))
        rows.append([r, r])
        cols.append([col, v])
        vals.append([1.0, -1.0])
        lo.append([0.0])
        hi.append([np.inf])
        r += 1
    for (f, t), col in y_col.items():  # devices holding f carry at most one device's worth of its demand each
        assert d.families is not None
        sel = np.flatnonzero((fam_of == f) & (pairs_t == t))
        room = (d.max_memory - d.families.shared[f, t], d.max_compute)
        for mat, cap in ((d.mem, room[0]), (d.comp, room[1])):
            if cap <= TOL:
                continue
            rows += [np.full(sel.size + 1, r)]
            cols += [np.append(sel, col)]
            vals += [np.append(mat[pairs_i[sel], t] / cap, -1.0)]
            lo.append([-np.inf])
            hi.append([0.0])
            r += 1
    for t in range(k):
        sel = np.flatnonzero(pairs_t == t)
        if sel.size == 0:
            continue
        items = pairs_i[sel]
        fams = sorted(f for (f, tt) in y_col if tt == t)
        for mat, cap in ((d.mem, d.max_memory), (d.comp, d.max_compute)):
            s = np.clip(mat[items, t] / cap, 0.0, 1.0)
            extra = [y_col[(f, t)] for f in fams] if mat is d.mem else []
            if extra:
                assert d.families is not None
                s = np.concatenate([s, np.clip(d.families.shared[fams, t] / cap, 0.0, 1.0)])
            for f in size_functions(s):
                rows += [np.full(s.size, r), [r]]
                cols += [np.concatenate([sel, np.asarray(extra, dtype=int)]), [nx + t]]
                vals += [f, [-devs[t]]]
                lo.append([-np.inf])
                hi.append([0.0])
                r += 1
    ny = len(y_col)
    a = coo_matrix((np.concatenate(vals), (np.concatenate([np.asarray(x) for x in rows]),
                                           np.concatenate([np.asarray(x) for x in cols]))),
                   shape=(r, nx + k + ny)).tocsr()
    c = np.concatenate([np.zeros(nx), prices, np.zeros(ny)])
    ub = np.concatenate([np.ones(nx), [t.max_count if t.max_count else np.inf for t in d.types], np.full(ny, np.inf)])
    bounds = Bounds(np.zeros(nx + k + ny), ub)
    cons = LinearConstraint(a, np.concatenate(lo), np.concatenate(hi))
    # Pure LP first: fast and always a valid bound; then integer instance counts on top.
    res = milp(c, bounds=bounds, constraints=cons, options=_options(time_limit))
    if res.status == 2:
        return Bound(np.inf, None, None, True, feasible=False, tightest=tightest(d))
    if res.x is None:
        return Bound(0.0, None, None, False)
    best_x, value, proven = res.x, float(res.fun), res.status == 0
    value = max(value, _representable(prices, ub[nx:nx + k], value))
    relax = Relaxation(c, cons, ub, pairs_i, pairs_t, (n, k))
    lp_counts = best_x[nx:nx + k].copy()
    if nx > INTEGER_COUNTS_MAX_VARS:
        x = np.zeros((n, k))
        x[pairs_i, pairs_t] = best_x[:nx]
        return Bound(max(0.0, value), x, lp_counts, proven, relaxation=relax)
    # Small problems: integer instance counts with the models still fractional, a little
    # tighter; its dual bound is valid even when the time limit stops it.
    integral = milp(c, integrality=np.concatenate([np.zeros(nx), np.ones(k), np.zeros(ny)]), bounds=bounds,
                    constraints=cons,
                    options={**_options(min(1.0, time_limit)), "mip_rel_gap": 1e-6})
    if integral.status == 2:
        return Bound(np.inf, None, None, True, feasible=False, tightest=tightest(d))
    dual = getattr(integral, "mip_dual_bound", None)
    if dual is not None and np.isfinite(dual) and dual > value:
        value = float(dual)
    if integral.x is not None and integral.status == 0:
        best_x = integral.x
    x = np.zeros((n, k))
    x[pairs_i, pairs_t] = best_x[:nx]
    return Bound(max(0.0, value), x, lp_counts, proven, relaxation=relax)


def _representable(prices: np.ndarray, max_counts: np.ndarray, at_least: float) -> float:
    """The cheapest bill any set of whole instances can add up to that is >= ``at_least``.

    Every plan costs a sum of whole instance prices and at least the relaxation's value,
    so this rounding up stays a valid bound (a knapsack over a handful of types: instant).
    """
    k = prices.size
    if k == 0 or at_least <= 0:
        return at_least
    res = milp(prices, integrality=np.ones(k), bounds=Bounds(np.zeros(k), max_counts),
               constraints=LinearConstraint(prices[None, :], [at_least - 1e-9], [np.inf]),
               options=_options(1.0))
    dual = getattr(res, "mip_dual_bound", None)
    if res.status == 0:
        return max(at_least, float(res.fun))
    return max(at_least, float(dual)) if dual is not None and np.isfinite(dual) else at_least


def tightest(d: Demands) -> str:
    """Name the limit that fails when capped types (``local``) cannot hold the models.

    Only models with no uncapped alternative count against a capped type.
    """
    ok = d.ok
    uncapped = np.array([t.max_count is None for t in d.types])
    stuck = ~(ok[:, uncapped].any(axis=1)) if uncapped.any() else np.ones(d.n, dtype=bool)
    worst, text = -1.0, ""
    for j, t in enumerate(d.types):
        if t.max_count is None:
            continue
        have = t.devices * t.max_count
        for dim, mat, cap in (("memory", d.mem, d.max_memory), ("compute", d.comp, d.max_compute)):
            need = float(mat[stuck & ok[:, j], j].sum() / cap)
            if need / have > worst:
                worst = need / have
                text = (f"{dim}: {int(stuck.sum())} models need {need:.2f} devices' worth of {dim} at "
                        f"--max-{dim} {cap:g} but {t.name} has {have} device(s) (x{t.max_count} instance)")
    if worst <= 1.0:
        text += "; in total they fit, but not split into whole models per device"
    return text
