"""Exact packing as a mixed-integer program (HiGHS via SciPy), for small problems.

Variables: z[i,t,j] = model i on device j of type t; u[t,j] = device used; n[t] =
instances of t bought. Devices of a type are interchangeable, so two symmetry cuts keep
the search small: used devices come first (u[t,j] >= u[t,j+1]), and model i (models
sorted largest first) may only open devices j <= i. The heuristic's cost caps how many
instances of each type are worth offering. Families add w[f,t,j] >= z[i,t,j] for their members
(device j holds family f), and each device's memory row pays f's shared bytes through w.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from shoal.pack.assignment import Instance, Packing
from shoal.pack.demand import Demands

MAX_ASSIGN_VARS = 12_000


@dataclass
class ExactResult:
    packing: Packing | None
    bound: float
    optimal: bool
    infeasible: bool = False


def device_budget(d: Demands, upper: float) -> list[int]:
    """Devices worth offering per type: never more than the models, the cost cap or max_count."""
    out = []
    for t, typ in enumerate(d.types):
        n_ok = int(d.ok[:, t].sum())
        k = math.ceil(n_ok / typ.devices)
        if typ.price > 0 and math.isfinite(upper):
            k = min(k, math.floor(upper / typ.price + 1e-9))
        if typ.max_count is not None:
            k = min(k, typ.max_count)
        out.append(min(n_ok, max(0, k) * typ.devices))
    return out


def problem_size(d: Demands, upper: float) -> int:
    budget = device_budget(d, upper)
    return sum(min(i + 1, budget[t]) for t in range(len(d.types)) for i in range(d.n) if d.ok[i, t])


def solve_exact(d: Demands, upper: float, time_limit: float) -> ExactResult:
    """Optimal packing (or the best found and a bound, when ``time_limit`` runs out)."""
    budget = device_budget(d, upper)
    norm = np.where(d.ok, np.maximum(d.mem / d.max_memory, d.comp / d.max_compute), np.inf)
    order = np.argsort(-norm.min(axis=1), kind="stable")
    z_index: list[tuple[int, int, int]] = []
    for pos, i in enumerate(order):
        for t in range(len(d.types)):
            if d.ok[i, t]:
                z_index += [(int(i), t, j) for j in range(min(pos + 1, budget[t]))]
    u_base = len(z_index)
    u_offset, off = [], u_base
    for t in range(len(d.types)):
        u_offset.append(off)
        off += budget[t]
    n_base = off
    w_col: dict[tuple[int, int, int], int] = {}  # (family, type, device) -> column, after the counts
    fam = d.families
    if fam is not None:
        for i, t, j in z_index:
            if fam.of[i] >= 0:
                w_col.setdefault((int(fam.of[i]), t, j), n_base + len(d.types) + len(w_col))
    nvar = n_base + len(d.types) + len(w_col)

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lo: list[float] = []
    hi: list[float] = []

    def row(entries: list[tuple[int, float]], low: float, high: float) -> None:
        r = len(lo)
        for col, v in entries:
            rows.append(r)
            cols.append(col)
            vals.append(v)
        lo.append(low)
        hi.append(high)

    by_item: dict[int, list[int]] = {}
    by_device: dict[tuple[int, int], list[int]] = {}
    for v, (i, t, j) in enumerate(z_index):
        by_item.setdefault(i, []).append(v)
        by_device.setdefault((t, j), []).append(v)
    for i in range(d.n):
        row([(v, 1.0) for v in by_item.get(i, [])], 1.0, 1.0)
    held: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for (f, t, j), col in w_col.items():
        assert fam is not None
        held.setdefault((t, j), []).append((col, float(fam.shared[f, t])))
    for v, (i, t, j) in enumerate(z_index):
        if fam is not None and fam.of[i] >= 0:
            row([(v, 1.0), (w_col[(int(fam.of[i]), t, j)], -1.0)], -np.inf, 0.0)
    for (t, j), vs in by_device.items():
        u = u_offset[t] + j
        row([(v, d.mem[z_index[v][0], t]) for v in vs] + held.get((t, j), []) + [(u, -d.max_memory)],
            -np.inf, 0.0)
        row([(v, d.comp[z_index[v][0], t]) for v in vs] + [(u, -d.max_compute)], -np.inf, 0.0)
        if len(z_index) <= 4000:
            for v in vs:
                row([(v, 1.0), (u, -1.0)], -np.inf, 0.0)
    for t, typ in enumerate(d.types):
        if budget[t] == 0:
            continue
        row([(u_offset[t] + j, 1.0) for j in range(budget[t])] + [(n_base + t, -float(typ.devices))], -np.inf, 0.0)
        for j in range(budget[t] - 1):
            row([(u_offset[t] + j + 1, 1.0), (u_offset[t] + j, -1.0)], -np.inf, 0.0)

    a = coo_matrix((vals, (rows, cols)), shape=(len(lo), nvar)).tocsr()
    c = np.zeros(nvar)
    ub = np.ones(nvar)
    for t, typ in enumerate(d.types):
        c[n_base + t] = typ.price
        ub[n_base + t] = math.ceil(budget[t] / typ.devices)
    # Presolve off: on a 4-model case with a 6e-8 demand, HiGHS's MIP presolve (SciPy 1.17.1)
    # returned a wrong "optimal" (tests/test_pack_solver.py keeps the case).
    integrality = np.ones(nvar)
    integrality[n_base + len(d.types):] = 0  # w is forced to 1 by any member's z, and costs nothing
    res = milp(c, integrality=integrality, bounds=Bounds(np.zeros(nvar), ub),
               constraints=LinearConstraint(a, lo, hi),
               options={"time_limit": time_limit, "mip_rel_gap": 1e-6, "disp": False, "presolve": False})
    dual = getattr(res, "mip_dual_bound", None)
    bound = float(dual) if dual is not None and np.isfinite(dual) else 0.0
    if res.x is None:
        return ExactResult(None, bound, False, infeasible=res.status == 2)
    x = np.rint(res.x)
    devices: dict[tuple[int, int], list[int]] = {}
    for v, (i, t, j) in enumerate(z_index):
        if x[v] > 0.5:
            devices.setdefault((t, j), []).append(i)
    instances: list[Instance] = []
    for t, typ in enumerate(d.types):
        used = sorted(j for (tt, j) in devices if tt == t)
        if not used:
            continue
        n_inst = math.ceil((max(used) + 1) / typ.devices)
        for k in range(n_inst):
            instances.append(Instance(t, [sorted(devices.get((t, k * typ.devices + j), []))
                                          for j in range(typ.devices)]))
    optimal = res.status == 0
    return ExactResult(Packing(instances).drop_empty(), float(res.fun) if optimal else bound, optimal)
