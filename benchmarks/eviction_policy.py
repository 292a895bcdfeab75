"""Hit rate of the registry's eviction rule against plain LRU, simulated (no models, no CPU noise).

Requests arrive at RATE/s for a model drawn by Zipf(S) over N ids; the resident set holds CAP
models. LRU evicts the least recently used; the registry's rule (``shoal/server/registry.py``)
evicts the least recent demand, each request counting 1 and fading with time constant TAU.

    .venv/bin/python benchmarks/eviction_policy.py --count 1000 --capacity 92 --rate 40 --zipf 1.1
"""

from __future__ import annotations

import argparse
import json
import math
import random


def simulate(requests: list[int], rate: float, capacity: int, tau: float | None) -> float:
    resident: set[int] = set()
    demand: dict[int, tuple[float, float]] = {}
    last: dict[int, float] = {}
    hits = 0
    for i, model in enumerate(requests):
        now = i / rate
        if model in resident:
            hits += 1
        else:
            if len(resident) >= capacity:
                if tau is None:
                    victim = min(resident, key=lambda m: last[m])
                else:
                    victim = min(resident, key=lambda m: (demand[m][0] * math.exp((demand[m][1] - now) / tau),
                                                          last[m]))
                resident.discard(victim)
            resident.add(model)
        if tau is not None:
            value, at = demand.get(model, (0.0, now))
            demand[model] = (value * math.exp((at - now) / tau) + 1.0, now)
        last[model] = now
    return hits / len(requests)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--capacity", type=int, default=92)
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    weights = [1.0 / (k ** args.zipf) for k in range(1, args.count + 1)]
    requests = rng.choices(range(args.count), weights=weights, k=int(args.rate * args.seconds))
    row = {"lru": round(simulate(requests, args.rate, args.capacity, None), 3)}
    for tau in (10.0, 30.0, 60.0, 300.0):
        row[f"demand_tau_{tau:g}s"] = round(simulate(requests, args.rate, args.capacity, tau), 3)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
