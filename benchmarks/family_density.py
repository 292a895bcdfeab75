"""Family density: thousands of members of one family resident in one process, and a Zipf tail over them.

One command from a fresh clone (after ./build.sh, which traces minilm-cls into ./store):

    .venv/bin/python benchmarks/family_density.py --count 10000 --budget 4GiB
    .venv/bin/python benchmarks/family_density.py --count 1000 --rate 40 --zipf 1.1 --warmup 30 --duration 60

It makes (once; reused, removed with --clean) ``count`` members of the base in a scratch store:
half LoRA adapters (rank 8 on query and value, `shoal/family/synth_lora.py`), half partial
fine-tunes (`shoal models synth`: new vectors and head, the base's matrices). Then:
  * without ``--rate``: serves them all with ``--preload all`` under ``--budget`` and prints how
    many are resident, the process RSS, the budget's count, the start-up time, and the store's
    size on disk against the base plus the sum of the members' own tensors;
  * with ``--rate``: Poisson arrivals at that rate choosing the member by Zipf(s), measured after a
    warm-up, and prints P50/P90/P99 over all requests, status counts, hit rate and swap-ins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.server_common import REPO, Server, machine  # noqa: E402
from benchmarks.server_density import dir_bytes, open_loop, pct, scrape  # noqa: E402
from shoal.loadtest.targets import ModelChooser  # noqa: E402


def ensure_members(scratch: Path, base_store: str, base: str, count: int) -> list[str]:
    from shoal.store import open_store

    store = open_store(f"file://{scratch}")
    have = set(store.list_ids())
    if base not in have:
        src = open_store(base_store)
        store.push(src.fetch(base), src.read_manifest(base))
    lora, partial = count // 2, count - count // 2
    def named(kind: str, n: int) -> list[str]:  # as synth names them: at least 4 digits, as many as n - 1 needs
        width = max(4, len(str(n - 1)))
        return [f"{base}-{kind}-{i:0{width}d}" for i in range(n)]

    ids = named("l", lora) + named("p", partial)
    if not set(ids) <= have:
        free = shutil.disk_usage(scratch).free
        if free < count * 2_000_000 + (10 << 30):
            sys.exit(f"{count} members need about {count * 2 / 1000:.0f} GB beside 10 GB kept free; "
                     f"{free / 1e9:.0f} GB are free: run a smaller --count")
        t = time.perf_counter()
        print(f"synthesising {count} members into {scratch} ...", flush=True)
        from shoal.family.synth_lora import synth_adapters

        synth_adapters(store, base, lora, prefix=f"{base}-l")
        subprocess.run([sys.executable, "-m", "shoal.cli", "models", "synth", "--from", base, "--count",
                        str(partial), "--prefix", f"{base}-p", "--store", f"file://{scratch}"], check=True, cwd=REPO)
        print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    return ids


def store_figures(scratch: Path, base: str, ids: list[str]) -> dict:
    """The store on disk against what content addressing promises: the base + every member's own tensors."""
    from shoal.family.keys import shared_tensors
    from shoal.store import open_store

    store = open_store(f"file://{scratch}")
    base_manifest = store.read_manifest(base)
    base_digests = {t.sha256 for t in base_manifest.tensors.values()}
    own = 0
    seen: set[str] = set()
    manifests = 0
    for model_id in ids:
        m = store.read_manifest(model_id)
        manifests += (scratch / model_id / "shoal.json").stat().st_size
        assert shared_tensors(m).keys() <= m.tensors.keys()
        for t in m.tensors.values():
            if t.sha256 not in base_digests and t.sha256 not in seen:
                seen.add(t.sha256)
                own += t.nbytes
    base_bytes = base_manifest.total_bytes
    on_disk = dir_bytes(scratch)
    return {"store_on_disk_gb": round(on_disk / 1e9, 3), "base_files_gb": round(base_bytes / 1e9, 3),
            "members_own_tensors_gb": round(own / 1e9, 3), "manifests_gb": round(manifests / 1e9, 3),
            "on_disk_over_base_plus_own": round(on_disk / (base_bytes + own), 3),
            "on_disk_minus_manifests_over_base_plus_own": round((on_disk - manifests) / (base_bytes + own), 3)}


def catalog(ids: list[str]) -> list[str]:
    """``--models`` for a short catalog; none (the whole scratch store: the base and its members) for a
    long one, whose ids would not fit one command-line argument (128 KiB)."""
    return ["--models", ",".join(ids)] if len(ids) <= 2000 else []


def resident(args: argparse.Namespace, ids: list[str]) -> dict:
    t0 = time.perf_counter()
    server = Server(["--store", f"file://{args.scratch}", *catalog(ids), "--memory-budget", args.budget,
                     "--preload", "all"], env={"SHOAL_CACHE_DIR": str(args.scratch.parent / "cache")})
    try:
        ready_s = time.perf_counter() - t0
        listing = httpx.get(server.url + "/models", timeout=120).json()
        ready = [m["id"] for m in listing["models"] if m["state"] == "ready"]
        sample = ready[:: max(1, len(ready) // 20)]
        statuses = [httpx.post(f"{server.url}/predictions/{m}", json={"text": "resident?"}, timeout=60).status_code
                    for m in sample]
        return {"members": len(ids), "resident": len(ready), "ready_after_s": round(ready_s, 1),
                "resident_bytes_counted_gb": round(listing["resident_bytes"] / 1e9, 3),
                "rss_gb": round(server.rss_bytes() / 1e9, 3), "sampled_200": statuses.count(200),
                "sampled": len(sample)}
    finally:
        server.stop()


def zipf_tail(args: argparse.Namespace, ids: list[str]) -> dict:
    server = Server(["--store", f"file://{args.scratch}", *catalog(ids), "--memory-budget", args.budget,
                     "--preload", args.preload], env={"SHOAL_CACHE_DIR": str(args.scratch.parent / "cache")})
    try:
        chooser = ModelChooser(f"zipf:{args.zipf}", ids, seed=1)
        if args.warmup > 0:
            asyncio.run(open_loop(server.url, chooser, args.rate, args.warmup, 2, 30.0))
        before = scrape(server.url)
        lat, codes, ok_lat, hit_lat = asyncio.run(open_loop(server.url, chooser, args.rate, args.duration, 3, 30.0))
        after = scrape(server.url)
        hits = after.get("shoal_model_cache_hits_total", 0) - before.get("shoal_model_cache_hits_total", 0)
        misses = after.get("shoal_model_cache_misses_total", 0) - before.get("shoal_model_cache_misses_total", 0)
        loads = after.get("shoal_model_loads_total", 0) - before.get("shoal_model_loads_total", 0)
        return {"members": len(ids), "rate": args.rate, "zipf": args.zipf, "requests": len(lat), "status": codes,
                "p50_ms": round(pct(lat, 50), 1), "p90_ms": round(pct(lat, 90), 1), "p99_ms": round(pct(lat, 99), 1),
                "hit_rate": round(hits / (hits + misses), 3) if hits + misses else None,
                "swapins": int(loads), "rss_gb": round(server.rss_bytes() / 1e9, 3)}
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-store", default=f"file://{REPO / 'store'}")
    ap.add_argument("--base", default="minilm-cls")
    ap.add_argument("--scratch", type=Path, default=REPO / ".shoal" / "bench" / "family-density" / "store")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--budget", default="4GiB")
    ap.add_argument("--rate", type=float, default=0.0, help="Poisson req/s over the members (0: the resident check)")
    ap.add_argument("--preload", default="none", help="the Zipf run's --preload: none (members load on first "
                    "request, inside the window too) or all (every member resident before the clock starts)")
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--warmup", type=float, default=30.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--clean", action="store_true", help="remove the scratch store at the end")
    args = ap.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    ids = ensure_members(args.scratch, args.base_store, args.base, args.count)
    report: dict = {"machine": machine()}
    try:
        report["store"] = store_figures(args.scratch, args.base, ids)
        report["run"] = zipf_tail(args, ids) if args.rate else resident(args, ids)
    finally:
        if args.clean:
            shutil.rmtree(args.scratch.parent, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
