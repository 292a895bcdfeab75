"""Pack benchmark: plan time and gap to the proven bound for synthetic BERT-base fleets.

Prints the figures of docs/BENCHMARKS.md (## pack):
  1. the acceptance command, end to end in a fresh process (wall time, printed gap);
  2. the same problem for several seeds, in process (planning time, cost, bound, gap);
  3. other candidate sets and a compute-bound variant (request rates x10);
  4. re-planning after 100 models leave and 100 arrive (models moved, time).

    .venv/bin/python benchmarks/pack_bench.py [--seeds 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shoal.pack.catalog import load_catalog, resolve_many
from shoal.pack.demand import build_demands, model_load
from shoal.pack.improve import balance
from shoal.pack.plan_builder import to_plan
from shoal.pack.plan_file import SolverReport
from shoal.pack.replan import moved, sticky_start
from shoal.pack.run import PackRequest, run_pack
from shoal.pack.solver import solve
from shoal.pack.synthetic import synthetic_models

ACCEPTANCE = ["inf1.6xlarge", "g4dn.xlarge", "g4dn.12xlarge"]
OTHERS = [["inf1.6xlarge"], ["inf1.xlarge", "inf1.6xlarge"], ["g5.xlarge", "inf2.xlarge"],
          ["c6i.4xlarge", "g4dn.xlarge"]]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def end_to_end(repeats: int) -> None:
    shoal = str(Path(sys.executable).parent / "shoal")
    cmd = [shoal, "pack", "--synthetic", "3000", "--seed", "0", "--instances", ",".join(ACCEPTANCE), "-o"]
    print(f"1. {' '.join(cmd[1:])} plan.json   (fresh process each time)")
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            t0 = time.monotonic()
            out = subprocess.run(cmd + [str(Path(tmp) / "plan.json")], capture_output=True, text=True, check=True,
                                 env={**os.environ, "COLUMNS": "200"}).stdout
            wall = time.monotonic() - t0
            gap = re.search(r"(gap [\d.]+%|optimal \(proven\))", out)
            plan = re.search(r"plan: (.*?) models on .*", out)
            print(f"   wall {wall:5.2f} s   {gap.group(1) if gap else '?'}   "
                  f"{plan.group(0) if plan else ''}")


def seeds(n: int) -> None:
    print(f"\n2. 3000 synthetic models on {','.join(ACCEPTANCE)}, in process (planning = models -> plan)")
    print(f"   {'seed':>4s}   {'plan':18s} {'$/h':>7s}  {'bound':>7s}  {'gap':>6s}  {'plan s':>6s}  {'cpu s':>6s}")
    for seed in range(n):
        t0, c0 = time.monotonic(), time.process_time()
        out = run_pack(PackRequest(instances=ACCEPTANCE, synthetic=3000, seed=seed))
        wall, cpu = time.monotonic() - t0, time.process_time() - c0
        rep = out.plan.solver
        assert rep is not None
        mix = ", ".join(f"{sum(1 for i in out.plan.instances if i.type == t)} x {t}"
                        for t in sorted({i.type for i in out.plan.instances}))
        print(f"   {seed:4d}   {mix:18s} {rep.cost_per_hour:7.3f}  {rep.lower_bound:7.3f}  {rep.gap:6.2%}  "
              f"{wall:6.2f}  {cpu:6.2f}")


def others() -> None:
    print("\n3. other candidate sets, 3000 synthetic models, seed 0 (x10: every request rate x10)")
    print(f"   {'instances':38s} {'rates':6s} {'plan':34s} {'$/h':>7s}  {'bound':>7s}  {'gap':>6s}  {'s':>5s}")
    for names in OTHERS + [ACCEPTANCE]:
        for scale in (1.0, 10.0):
            if names == ACCEPTANCE and scale == 1.0:
                continue
            types = resolve_many(load_catalog(), names)
            loads = [model_load(m, r * scale) for m, r in synthetic_models(3000, 0)]
            d = build_demands(loads, types, 0.9, 0.83)
            keep = [i for i in range(d.n) if d.ok[i].any()]
            d = d.subset(keep)
            t0 = time.monotonic()
            r = solve(d, time_limit=5.0)
            wall = time.monotonic() - t0
            mix = ", ".join(f"{r.packing.count(t)} x {types[t].name}" for t in range(len(types)) if r.packing.count(t))
            dropped = f" ({3000 - d.n} too hot dropped)" if d.n < 3000 else ""
            print(f"   {','.join(names):38s} x{scale:<5g} {mix:34s} {r.cost:7.3f}  {r.lower_bound:7.3f}  "
                  f"{r.gap:6.2%}  {wall:5.2f}{dropped}")


def replan() -> None:
    print("\n4. re-plan: 3000 planned models, then 100 leave and 100 arrive")
    types = resolve_many(load_catalog(), ACCEPTANCE)
    pairs = synthetic_models(3100, 0)
    all_loads = [model_load(m, r) for m, r in pairs]

    def plan_of(loads, start=None):  # noqa: ANN001, ANN202
        d = build_demands(loads, types, 0.9, 0.83)
        r = solve(d, time_limit=5.0, start=start(d) if start else None)
        p = r.packing if start else balance(d, r.packing)
        rep = SolverReport(method=r.method, seconds=r.seconds, cost_per_hour=r.cost, lower_bound=r.lower_bound,
                           gap=r.gap)
        return to_plan(d, p, loads, rep), r

    first, _ = plan_of(all_loads[:3000])
    t0 = time.monotonic()
    second, r = plan_of(all_loads[100:], start=lambda d: sticky_start(d, first))
    wall = time.monotonic() - t0
    fresh, rf = plan_of(all_loads[100:])
    print(f"   sticky: ${r.cost:.3f}/h, gap {r.gap:.2%}, {moved(first, second)} of 2900 kept models moved, "
          f"{wall:.2f} s")
    print(f"   fresh:  ${rf.cost:.3f}/h, gap {rf.gap:.2%}, {moved(first, fresh)} of 2900 kept models moved")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{time.strftime('%Y-%m-%d')}, nproc {os.cpu_count()}, {cpu_model()}, load average {load:.1f} at start\n")
    end_to_end(args.repeats)
    seeds(args.seeds)
    others()
    replan()


if __name__ == "__main__":
    main()
