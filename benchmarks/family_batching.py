"""Family batching: 24 members of one family (partial fine-tunes + LoRA adapters) under 40 closed-loop clients.

One command from a fresh clone (after ./build.sh, which traces minilm-cls into ./store):

    .venv/bin/python benchmarks/family_batching.py

In one run it measures:
  1. the in-process limit: the base model's own handler (its shared graph, no family, no HTTP)
     at batch 8, best of one worker x all cores and one single-threaded worker per core;
  2. the server over the 24 members: 40 clients, each request to a random member, so requests
     of different members must meet in one batch to reach batch 8;
  3. the answers: every answer of the load phase for a fixed set of (member, text) pairs is
     compared with that member run alone in process through its own graph (LoRA merged into
     the weights, as PEFT's merge does): the largest class-probability change must stay within
     the precision gate (0.01).
Prints one JSON object; docs/BENCHMARKS.md `## families` records the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.server_common import REPO, Server, machine  # noqa: E402
from benchmarks.server_inprocess import run_layout  # noqa: E402
from shoal.loadtest.http import Connection, parse_base_url  # noqa: E402
from shoal.samples import sentences  # noqa: E402

PROBABILITY_GATE = 0.01  # shoal/trace/precision.py PROBABILITY_DIFF_MAX


def ensure_family(scratch: Path, base_store: str, base: str, partial: int, lora: int) -> list[str]:
    """The base, ``partial`` synthesised partial fine-tunes and ``lora`` LoRA members in ``scratch``."""
    from shoal.family.synth_lora import synth_adapters
    from shoal.store import open_store
    from shoal.trace.synth import synth_models

    store = open_store(f"file://{scratch}")
    have = set(store.list_ids())
    if base not in have:
        src = open_store(base_store)
        store.push(src.fetch(base), src.read_manifest(base))
    ids = [f"{base}-p-{i:04d}" for i in range(partial)] + [f"{base}-l-{i:04d}" for i in range(lora)]
    if not set(ids) <= have:
        synth_models(store, base, partial, prefix=f"{base}-p")
        synth_adapters(store, base, lora, prefix=f"{base}-l")
    return ids


def reference_answers(scratch: Path, ids: list[str], texts: list[str]) -> dict[tuple[str, str], list[float]]:
    """Each member alone, in process, through its own graph (a LoRA member with its update merged in)."""
    import torch
    from safetensors import safe_open

    from shoal.graphs import BoundGraph, load_graph
    from shoal.server.handlers import LoadContext, create_handler
    from shoal.store import open_store

    store = open_store(f"file://{scratch}")
    out: dict[tuple[str, str], list[float]] = {}
    for model_id in ids:
        manifest = store.read_manifest(model_id)
        folder = store.fetch(model_id)
        weights: dict[str, torch.Tensor] = {}
        for name, entry in manifest.tensors.items():
            with safe_open(str(folder / entry.file), framework="pt") as fh:
                weights[name] = fh.get_tensor(entry.key or name)
        if manifest.adapter is not None:
            for target in manifest.adapter.targets:
                w = weights[f"{target}.weight"]
                delta = weights[f"{target}.lora_B"].float() @ weights[f"{target}.lora_A"].float()
                weights[f"{target}.weight"] = (w.float() + manifest.adapter.scale * delta).to(w.dtype)
        plain = manifest.model_copy(update={"adapter": None, "family_graph": None, "weights": None})
        handler = create_handler(plain, folder, LoadContext("cpu", "cpu"))
        graph, names = load_graph(folder / manifest.artifact, "cpu")
        handler.module = BoundGraph(graph, [weights[n] for n in names])
        results, _ = handler.run(texts, 1)
        for text, result in zip(texts, results):
            out[(model_id, text)] = list(result["scores"].values())
    return out


async def closed_loop_checked(url: str, ids: list[str], clients: int, seconds: float, warmup_s: float,
                              texts: list[str]) -> dict:
    """40 clients, random member and text per request; every answer kept for the check."""
    endpoint = parse_base_url(url)
    latencies: list[float] = []
    answers: list[tuple[str, str, list[float]]] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + seconds
    bodies = {t: json.dumps({"text": t}).encode() for t in texts}

    async def client(i: int) -> None:
        nonlocal errors
        rng = random.Random(i)
        conn = Connection(endpoint, 120.0)
        while (t0 := time.perf_counter()) < stop_at:
            model_id, text = rng.choice(ids), rng.choice(texts)
            resp = await conn.request("POST", f"/predictions/{model_id}", bodies[text])
            t1 = time.perf_counter()
            if resp.status != 200:
                errors += 1
                continue
            answers.append((model_id, text, list(json.loads(resp.body)["prediction"]["scores"].values())))
            if t0 >= measure_from and t1 <= stop_at:
                latencies.append((t1 - t0) * 1000)
        conn.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q / 100 * len(latencies)))]

    return {"requests": len(latencies), "errors": errors, "seq_per_s": round(len(latencies) / seconds, 1),
            "p50_ms": round(pct(50), 1), "p90_ms": round(pct(90), 1), "p99_ms": round(pct(99), 1),
            "p99_over_p50": round(pct(99) / pct(50), 3), "answers": answers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-store", default=f"file://{REPO / 'store'}")
    ap.add_argument("--base", default="minilm-cls")
    ap.add_argument("--scratch", type=Path, default=REPO / ".shoal" / "bench" / "family")
    ap.add_argument("--partial", type=int, default=12)
    ap.add_argument("--lora", type=int, default=12)
    ap.add_argument("--clients", type=int, default=40)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--inprocess-seconds", type=float, default=8.0)
    ap.add_argument("--server-args", default="", help="extra `shoal serve` arguments, e.g. '--max-batch-size 8'")
    ap.add_argument("--same-model", action="store_true",
                    help="also serve the base alone to the same clients: the same-model tail, for comparison")
    ap.add_argument("--keep", action="store_true", help="keep the scratch store (default: removed at the end)")
    args = ap.parse_args()
    ids = ensure_family(args.scratch, args.base_store, args.base, args.partial, args.lora)
    texts = sentences(16, seed=5)
    report: dict = {"machine": machine(), "members": len(ids), "clients": args.clients}
    try:
        import torch

        from benchmarks.server_inprocess import load_models

        handlers = load_models(f"file://{args.scratch}", args.base, 1)  # the base alone: its own shared graph
        cores = len(os.sched_getaffinity(0))
        torch.set_num_threads(cores)
        rows = [run_layout(handlers, 1, cores, 8, args.inprocess_seconds, 2.0),
                run_layout(handlers, cores, 1, 8, args.inprocess_seconds, 2.0)]
        report["inprocess_batch8"] = rows
        best = max(r["seq_per_s"] for r in rows)
        del handlers
        expected = reference_answers(args.scratch, ids, texts)
        run, batch = serve_and_load(args, ids, ids, texts)
        answers = run.pop("answers")
        worst = max(max(abs(a - b) for a, b in zip(scores, expected[(m, t)])) for m, t, scores in answers)
        report["server"] = run | {"mean_batch": batch}
        report["server_over_inprocess"] = round(run["seq_per_s"] / best, 3)
        report["answers_checked"] = len(answers)
        report["max_probability_change_vs_alone"] = round(worst, 6)
        report["within_gate"] = worst <= PROBABILITY_GATE
        if args.same_model:  # the tail of one model's own batches under the same clients, same run
            same, same_batch = serve_and_load(args, [args.base], [args.base], texts)
            same.pop("answers")
            report["same_model_server"] = same | {"mean_batch": same_batch}
        report["load1_after"] = round(os.getloadavg()[0], 2)
    finally:
        if not args.keep:
            shutil.rmtree(args.scratch, ignore_errors=True)
    print(json.dumps(report, indent=2))


def serve_and_load(args: argparse.Namespace, catalog: list[str], targets: list[str],
                   texts: list[str]) -> tuple[dict, float]:
    """A server over ``catalog``, the closed loop over ``targets``; the run and its mean batch."""
    gc.collect()
    gc.freeze()  # the client's own collections (torch, handlers, answers) must not stall its event loop
    server = Server(["--store", f"file://{args.scratch}", "--models", ",".join(catalog), "--preload", "all",
                     *args.server_args.split()])
    try:
        run = asyncio.run(closed_loop_checked(server.url, targets, args.clients, args.duration, args.warmup, texts))
        return run, _mean_batch(server.url)
    finally:
        server.stop()


def _mean_batch(url: str) -> float:
    import httpx

    total = count = 0.0
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("shoal_batch_size_sum"):
            total += float(line.split()[-1])
        elif line.startswith("shoal_batch_size_count"):
            count += float(line.split()[-1])
    return round(total / count, 2) if count else 0.0


if __name__ == "__main__":
    main()
