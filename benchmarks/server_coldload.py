"""Cold load of one model from the local store, by step, in a fresh process (torch already initialised).

Steps: fetch (read + sha256 of every file against the manifest), torch.jit.load, tokenizer,
first forward (warm-up). Also reads what the server reports for the same load
(POST /models/{id}/load -> load_ms, which includes all of the above).

    .venv/bin/python benchmarks/server_coldload.py --store file://DIR --model cls-0000 [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from server_common import Server, machine  # noqa: E402

STEP_SCRIPT = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
with torch.inference_mode():
    torch.ones(8, 8) @ torch.ones(8, 8)
from shoal.store import open_store
from shoal.server.handlers.text import TextHandler
from shoal.server.handlers.base import LoadContext
from tokenizers import Tokenizer
store = open_store(sys.argv[1]); mid = sys.argv[2]
t0 = time.perf_counter(); manifest = store.read_manifest(mid); folder = store.fetch(mid)
t1 = time.perf_counter(); module = torch.jit.load(str(folder / manifest.artifact), map_location="cpu")
t2 = time.perf_counter(); tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
t3 = time.perf_counter(); h = TextHandler(manifest, folder, LoadContext("cpu", "cpu"))
t4 = time.perf_counter(); h.warmup()
t5 = time.perf_counter(); h.warmup()
t6 = time.perf_counter()
print(json.dumps({"fetch_verify_ms": (t1-t0)*1e3, "jit_load_ms": (t2-t1)*1e3, "tokenizer_ms": (t3-t2)*1e3,
                  "handler_ms": (t4-t3)*1e3, "first_forward_ms": (t5-t4)*1e3, "second_forward_ms": (t6-t5)*1e3}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(json.dumps({"machine": machine()}))
    rows = []
    for _ in range(args.repeat):
        out = subprocess.run([sys.executable, "-c", STEP_SCRIPT, args.store, args.model, str(args.threads)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout))
    print(json.dumps({"steps_median_ms": {k: round(statistics.median(r[k] for r in rows), 1) for k in rows[0]}}))
    server = Server(["--store", args.store, "--models", args.model, "--preload", "none"])
    try:
        import httpx

        loads = []
        for _ in range(args.repeat):
            loads.append(httpx.post(f"{server.url}/models/{args.model}/load", timeout=60).json()["load_ms"])
            httpx.delete(f"{server.url}/models/{args.model}", timeout=60)
        print(json.dumps({"server_load_ms": loads, "median": statistics.median(loads),
                          "note": "first load in a process includes one-time torch/JIT initialisation"}))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
