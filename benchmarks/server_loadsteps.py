"""Where a model load's time goes, by step, in a process that has loaded models before.

For models ``--first``.. of a store: ``store.fetch`` (read + sha256), handler construction
(``torch.jit.load`` + shared tokenizer), the first three forwards, then batch-1 throughput.
Run it once per graph executor to compare them (one process each: the switch is process-wide):

    .venv/bin/python benchmarks/server_loadsteps.py --store file://DIR --executor profiling
    .venv/bin/python benchmarks/server_loadsteps.py --store file://DIR --executor legacy
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", required=True)
    ap.add_argument("--prefix", default="cls-")
    ap.add_argument("--first", type=int, default=8)
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--executor", choices=["profiling", "legacy"], default="legacy")
    ap.add_argument("--seconds", type=float, default=1.5, help="batch-1 throughput time per model")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    torch._C._jit_set_profiling_executor(args.executor == "profiling")
    from shoal.samples import sentences
    from shoal.server.handlers import LoadContext, create_handler
    from shoal.store import open_store

    store = open_store(args.store)
    texts = sentences(64, seed=3)
    rows, handlers = [], []
    for i in range(args.first, args.first + args.count):
        mid = f"{args.prefix}{i:04d}"
        t0 = time.perf_counter()
        manifest, folder = store.read_manifest(mid), store.fetch(mid)
        t1 = time.perf_counter()
        h = create_handler(manifest, folder, LoadContext("cpu", "cpu"))
        t2 = time.perf_counter()
        marks = [t2]
        for _ in range(3):
            h.run(h.sample_inputs(), 8)
            marks.append(time.perf_counter())
        rows.append({"fetch_verify": t1 - t0, "jit_load_tokenizer": t2 - t1, "forward1": marks[1] - marks[0],
                     "forward2": marks[2] - marks[1], "forward3": marks[3] - marks[2]})
        handlers.append(h)
    rates = []
    for h in handlers:
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < args.seconds:
            h.run([texts[n % len(texts)]], 1)
            n += 1
        rates.append(n / (time.perf_counter() - t))
    steady = rows[1:]  # the first load in a process pays one-time initialisation
    print(json.dumps({"executor": args.executor,
                      "best_ms": {k: round(min(r[k] for r in steady) * 1e3, 1) for k in rows[0]},
                      "median_ms": {k: round(statistics.median(r[k] for r in steady) * 1e3, 1) for k in rows[0]},
                      "batch1_seq_per_s": round(statistics.median(rates), 1)}))


if __name__ == "__main__":
    main()
