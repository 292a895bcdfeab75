"""Family packing benchmark: servers and $/h with and without family accounting.

Prints the figures of docs/BENCHMARKS.md (## family packing):
  1. 1,000 synthetic MiniLM family members on c5.2xlarge at three request rates, through
     ``run_pack`` (what ``shoal pack --synthetic-family 1000 [--no-families]`` runs);
  2. a mixed fleet: 30 families of 2-119 members (40-450 MB shared each) beside 800 models
     without a family (100-600 MB), where compute-heavy families must share servers with
     memory-heavy models.

    .venv/bin/python benchmarks/family_pack.py
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from shoal.pack.assignment import violations
from shoal.pack.catalog import load_catalog, resolve_many
from shoal.pack.demand import ModelLoad, build_demands
from shoal.pack.families import placements
from shoal.pack.improve import balance
from shoal.pack.run import PackRequest, run_pack
from shoal.pack.solver import solve

RATES: list[tuple[str, float | None]] = [("long tail (seed 0)", None), ("0.05 req/s", 0.05), ("1 req/s", 1.0)]
MIXED_TYPES = [["c5.2xlarge"], ["c5.2xlarge", "c5.9xlarge", "c6i.xlarge"], ["inf1.6xlarge", "g4dn.xlarge",
                                                                          "g4dn.12xlarge"]]


def cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def one_family() -> None:
    print("| request rate | with families | $/h | without | $/h | s (with / without) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, rps in RATES:
        row = []
        for families in (True, False):
            t0 = time.monotonic()
            out = run_pack(PackRequest(instances=["c5.2xlarge"], synthetic_family=1000, rps_per_model=rps,
                                       families=families))
            p = out.plan
            assert out.result.lower_bound <= p.cost_per_hour + 1e-6
            row.append((f"{len(p.servers)} servers, {len(p.instances)} instances", p.cost_per_hour,
                        time.monotonic() - t0))
        (a, ca, ta), (b, cb, tb) = row
        print(f"| {label} | {a} | {ca:.2f} | {b} | {cb:.2f} | {ta:.1f} / {tb:.1f} |")


def mixed_fleet(seed: int = 0) -> list[ModelLoad]:
    rng = np.random.default_rng(seed)

    def rate() -> float:
        return float(min(2.0, 0.3 * np.exp(1.2 * rng.standard_normal())))

    loads = []
    for f in range(30):
        shared = int(rng.uniform(40e6, 450e6))
        for i in range(int(rng.integers(2, 120))):
            loads.append(ModelLoad(id=f"f{f}-{i}", processor="cpu", memory_bytes=int(rng.uniform(0.2e6, 5e6)),
                                   rps=rate(), batch_size=1, ms_per_request=float(rng.uniform(5, 60)), threads=2,
                                   family=f"k{f}", shared_bytes=shared))
    for i in range(800):
        loads.append(ModelLoad(id=f"p{i}", processor="cpu", memory_bytes=int(rng.uniform(100e6, 600e6)),
                               rps=rate(), batch_size=1, ms_per_request=float(rng.uniform(20, 60)), threads=2))
    return loads


def mixed() -> None:
    loads = mixed_fleet()
    plain = [replace(x, memory_bytes=x.memory_bytes + x.shared_bytes, family=None, shared_bytes=0) for x in loads]
    print(f"\nmixed fleet: {len(loads)} models")
    print("| candidates | with families $/h | bound | gap | family-server slots (30 families) | s "
          "| without $/h | gap |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    catalog = load_catalog(None)
    for names in MIXED_TYPES:
        types = resolve_many(catalog, names, None)
        d = build_demands(loads, types, 0.9, 0.83)
        t0 = time.monotonic()
        r = solve(d, time_limit=5.0)
        seconds = time.monotonic() - t0
        packing = balance(d, r.packing)
        assert not violations(d, r.packing) and not violations(d, packing)
        slots = sum(len(f.devices) for f in placements(d, [i.devices for i in packing.instances]))
        r0 = solve(build_demands(plain, types, 0.9, 0.83), time_limit=5.0)
        print(f"| {', '.join(names)} | {r.cost:.2f} | {r.lower_bound:.2f} | {r.gap:.1%} | {slots} | {seconds:.1f} "
              f"| {r0.cost:.2f} | {r0.gap:.1%} |")


if __name__ == "__main__":
    print(f"CPU: {cpu_model()}")
    one_family()
    mixed()
