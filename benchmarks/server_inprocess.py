"""The in-process limit: the server's own handler code (tokenise + batched forward + post-process), no HTTP.

For a set of stored models, each worker thread repeatedly picks a random model and
runs one batch of ~30-word sentences. Two layouts: one worker using every core's
torch threads, and one single-threaded worker per core. Prints one JSON row per
(layout, batch size); the best row is the limit a server is compared with.

    .venv/bin/python benchmarks/server_inprocess.py --store file://DIR --prefix cls --batch-sizes 1,4,8,16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoal.samples import sentences  # noqa: E402
from shoal.server.handlers import LoadContext, create_handler  # noqa: E402
from shoal.store import open_store  # noqa: E402


def load_models(uri: str, prefix: str, count: int) -> list:
    store = open_store(uri)
    ids = [i for i in store.list_ids() if i.startswith(prefix)][:count]
    ctx = LoadContext("cpu", "cpu")
    return [create_handler(store.read_manifest(i), store.fetch(i), ctx) for i in ids]


def run_layout(handlers: list, workers: int, threads: int, batch: int, seconds: float, warm_s: float) -> dict:
    import torch

    texts = sentences(512, seed=11)
    done = [0] * workers
    stop = [False, False]  # [measuring, stopping]

    def worker(i: int) -> None:
        torch.set_num_threads(threads)
        rng = random.Random(i)
        while not stop[1]:
            h = rng.choice(handlers)
            h.run([rng.choice(texts) for _ in range(batch)], batch)
            if stop[0]:
                done[i] += batch

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in pool:
        t.start()
    time.sleep(warm_s)
    stop[0] = True
    start = time.perf_counter()
    time.sleep(seconds)
    measured = sum(done)
    elapsed = time.perf_counter() - start
    stop[1] = True
    for t in pool:
        t.join()
    return {"workers": workers, "threads": threads, "batch": batch, "seq_per_s": round(measured / elapsed, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", required=True)
    ap.add_argument("--prefix", default="cls")
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--batch-sizes", default="1,2,4,8,16")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    args = ap.parse_args()
    import torch

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    handlers = load_models(args.store, args.prefix, args.count)
    for h in handlers:  # every model sees a few shapes first, as it would after a minute of serving
        for n in (1, 2, 4):
            h.run(sentences(n, seed=n), n)
    rows = []
    for workers, threads in ((1, cores), (cores, 1)):
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            row = run_layout(handlers, workers, threads, batch, args.seconds, args.warmup)
            rows.append(row)
            print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: r["seq_per_s"])
    print(json.dumps({"limit_seq_per_s": best["seq_per_s"], "best": best, "models": len(handlers)}), flush=True)


if __name__ == "__main__":
    main()
