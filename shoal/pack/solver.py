"""Choose instances and place every model: minimise $/h under both per-device limits.

Order of work: (1) the relaxation gives a proven lower bound and a fractional plan;
(2) the greedy packers (``greedy.py``) turn it, its re-solves with lightly used
types' counts pinned, and each single-type plan into whole devices, and the cheapest
wins; (3) improvement moves empty the lightest instances; (4) if the problem is small
enough, the exact MILP proves the optimum (or tightens the bound) within the time
limit. The report always carries the bound and the gap to it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from shoal.errors import UsageError
from shoal.pack.assignment import Packing
from shoal.pack.bounds import Bound, lower_bound, tightest
from shoal.pack.demand import Demands
from shoal.pack.exact import MAX_ASSIGN_VARS, problem_size, solve_exact
from shoal.pack.heuristic import guided, single_type
from shoal.pack.improve import improve


@dataclass
class Result:
    packing: Packing
    cost: float
    lower_bound: float
    method: str
    seconds: float
    optimal: bool

    @property
    def gap(self) -> float:
        return gap(self.cost, self.lower_bound)


def gap(cost: float, bound: float) -> float:
    if cost <= bound + 1e-9:
        return 0.0
    return (cost - bound) / bound if bound > 0 else float("inf")


def solve(d: Demands, time_limit: float = 5.0, exact: bool = True, start: Packing | None = None,
          singles: list[Packing] | None = None) -> Result:
    """Best packing found within ``time_limit`` seconds, with its lower bound.

    ``start`` (a re-plan's sticky packing) is improved but never replaced by a fresh
    heuristic plan, so placements survive; the exact solver is then skipped.
    ``singles``: single-type packings already computed (else they are built here).
    """
    t0 = time.monotonic()
    deadline = t0 + time_limit
    homeless = [d.ids[i] for i in range(d.n) if not d.ok[i].any()]
    if homeless:
        raise UsageError(f"model {homeless[0]} fits on no device of the candidate types within the limits")
    bound = lower_bound(d, time_limit=max(0.5, time_limit / 2))
    if not bound.feasible:
        raise UsageError(f"no plan meets the limits; tightest constraint: {bound.tightest}")
    if start is None:
        if singles is None:
            singles = [p for t in range(len(d.types)) if (p := single_type(d, t))]
        candidates = list(singles)
        try:
            candidates.append(guided(d, bound.x))
            candidates += [guided(d, x) for x in _rounded_assignments(bound)]
        except UsageError:
            if not candidates:  # limited types (local) the greedy rules cannot fill: only the MILP can
                return _exact_only(d, bound.value, t0, time_limit)
        best = min(candidates, key=lambda p: (p.cost(d), len(p.instances)))
    else:
        best = start
    best = improve(d, best, deadline=min(deadline, time.monotonic() + max(0.5, time_limit / 3)))
    lb, method, optimal = bound.value, "heuristic: relaxation-guided greedy packing + improvement", False
    cost = best.cost(d)
    if start is None and exact and cost > lb + 1e-9 and problem_size(d, cost) <= MAX_ASSIGN_VARS:
        remaining = deadline - time.monotonic()
        if remaining > 0.2:
            r = solve_exact(d, cost, remaining)
            if r.packing is not None and r.packing.cost(d) < cost - 1e-9:
                best, cost = r.packing, r.packing.cost(d)
            lb = max(lb, min(r.bound, cost))
            if r.optimal:
                lb, optimal, method = cost, True, "exact: HiGHS MILP (optimal)"
            else:
                method = "exact: HiGHS MILP (time limit; best found)"
    if lb > cost + 1e-6:  # a "bound" above a valid plan's cost is a solver fault: prove nothing
        return Result(best, cost, cost, method + " (bound failed; optimality not proven)", time.monotonic() - t0,
                      False)
    if cost <= lb + 1e-9:
        optimal = True
        lb = cost
    return Result(best, cost, lb, method, time.monotonic() - t0, optimal)


def _rounded_assignments(bound: Bound, limit: int = 4) -> list[np.ndarray]:
    """Relaxations re-solved with a lightly used type's count rounded down and up.

    A type the relaxation buys a fraction of (0.4 of a GPU box) costs a whole instance
    once bought; pinning the count lets the relaxation fill that instance, or do without.
    """
    out: list[np.ndarray] = []
    if bound.relaxation is None or bound.counts is None:
        return out
    for t, y in enumerate(bound.counts):
        if len(out) >= limit:
            break
        if 1e-6 < y < 3 and abs(y - round(y)) > 1e-6:
            for count in sorted({math.floor(y), math.ceil(y)}):
                x = bound.relaxation.solve({t: count})
                if x is not None:
                    out.append(x)
    return out


def _exact_only(d: Demands, bound: float, t0: float, time_limit: float) -> Result:
    """No greedy packing respects the limited instance counts: ask the MILP, or say why not."""
    if problem_size(d, float("inf")) <= MAX_ASSIGN_VARS:
        r = solve_exact(d, float("inf"), max(0.5, time_limit - (time.monotonic() - t0)))
        if r.packing is not None:
            cost = r.packing.cost(d)
            lb = cost if r.optimal else max(bound, min(r.bound, cost))
            return Result(r.packing, cost, lb, "exact: HiGHS MILP", time.monotonic() - t0, r.optimal)
    raise UsageError(f"no plan found within the limits; tightest constraint: {tightest(d)}")
