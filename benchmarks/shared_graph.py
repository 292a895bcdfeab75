"""The shared graph against the frozen module it replaces: forward speed, and what a swap-in costs.

Traces minilm-cls (from its catalog entry, offline) twice at one precision: frozen with its
weights (the old artifact) and as a graph taking the weights as inputs (the artifact the
server swaps models under). Times both at batch 1 and 8 on one thread, alternating, then
times what a swap-in does: map a weights file (safetensors, page cache warm) and the first
forward with those weights.

    .venv/bin/python benchmarks/shared_graph.py [--precision bf16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


def timed(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(5):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    import torch

    from benchmarks.server_common import machine
    from shoal import graphs
    from shoal.samples import sentences
    from shoal.spec import load_spec
    from shoal.trace.sources import load_eager_model, load_tokenizer
    from shoal.trace.wrappers import wrap

    torch.set_num_threads(1)
    torch._C._jit_set_profiling_executor(False)  # the server's executor
    spec = load_spec(REPO / "models" / "minilm-cls.yaml")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    wrapper = wrap(spec.task, load_eager_model(spec).to(dtype))
    tok = load_tokenizer(spec)
    enc = tok(sentences(8, seed=4), padding=True, truncation=True, max_length=spec.seq_len, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.inference_mode():
        frozen = torch.jit.freeze(torch.jit.trace(wrapper, (ids[:2], mask[:2]), check_trace=False).eval())
    graph, names = graphs.trace_graph(wrapper, (ids[:2], mask[:2]))
    weights = [p.detach() for p in wrapper.parameters()]
    print(f"# {machine()} precision={args.precision} torch={torch.__version__} threads=1", flush=True)
    rows: dict[str, list[float]] = {}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for b in (1, 8):
                rows.setdefault(f"frozen_b{b}_ms", []).append(timed(lambda: frozen(ids[:b], mask[:b]), args.runs))
                rows.setdefault(f"shared_b{b}_ms", []).append(
                    timed(lambda: graph(ids[:b], mask[:b], weights), args.runs))
    with tempfile.TemporaryDirectory() as tmp:
        maps, firsts = [], []
        for i in range(12):
            path = Path(tmp) / f"w{i}.safetensors"
            graphs.save_weights(wrapper, path)
            path.read_bytes()  # page cache warm, as from the local disk tier
            t0 = time.perf_counter()
            mapped = graphs.load_weights(path, names, "cpu")
            t1 = time.perf_counter()
            with torch.inference_mode():
                graph(ids[:1], mask[:1], mapped)
            t2 = time.perf_counter()
            maps.append((t1 - t0) * 1000)
            firsts.append((t2 - t1) * 1000)
    out = {k: round(statistics.median(v), 2) for k, v in rows.items()}
    out.update({"b1_ratio_shared_over_frozen": round(out["shared_b1_ms"] / out["frozen_b1_ms"], 3),
                "b8_ratio_shared_over_frozen": round(out["shared_b8_ms"] / out["frozen_b8_ms"], 3),
                "map_weights_ms_median": round(statistics.median(maps), 2),
                "first_forward_mapped_b1_ms_median": round(statistics.median(firsts), 2),
                "graph_file_bytes": None})
    with tempfile.TemporaryDirectory() as tmp:
        graphs.save_graph(graph, names, Path(tmp) / "graph.pt")
        out["graph_file_bytes"] = (Path(tmp) / "graph.pt").stat().st_size
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
