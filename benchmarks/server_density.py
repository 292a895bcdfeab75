"""Density: N distinct models behind one process with a memory budget, open-loop Poisson, Zipf model choice.

One command from a fresh clone (after ./build.sh, which traces minilm-cls into ./store):

    .venv/bin/python benchmarks/server_density.py --count 1000 --budget 4GiB --rate 40 --zipf 1.1

It makes (once; they are reused) N copies of minilm-cls whose every tensor differs
(`shoal models synth --distinct`), starts `shoal serve --preload none --memory-budget B`
on them, sends Poisson arrivals at R req/s choosing the model by Zipf(s) for a warm-up
then a measured window, and prints: P50/P90/P99 over all requests (cold ones included,
from the scheduled send time), status counts, hit rate, swap-ins per second and their
time distribution, the server's RSS and the store's size on disk.

``--marginal K`` instead loads K models one at a time and prints the RSS each adds (the
real marginal cost the budget should count) and the swap-in time from the local cache with
a warm page cache and, with ``--cold``, after dropping the weights from the page cache.
``--rate-steps 40,80`` runs several rates in one server (the overload check).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.server_common import REPO, Server, bodies, machine  # noqa: E402
from shoal.loadtest.http import Connection, HttpError, parse_base_url  # noqa: E402
from shoal.loadtest.targets import ModelChooser  # noqa: E402


def ensure_fleet(store: Path, base_store: str, base: str, count: int) -> list[str]:
    """``count`` distinct copies of ``base`` in ``store`` (made once, reused by later runs)."""
    from shoal.store import open_store

    prefix = f"{base}-d"
    local = open_store(f"file://{store}")
    have = set(local.list_ids())
    ids = [f"{prefix}-{i:04d}" for i in range(count)]
    missing = [i for i in range(count) if ids[i] not in have]
    if missing:
        src = open_store(base_store)
        manifest = src.read_manifest(base)
        if not manifest.weights:
            sys.exit(f"{base} in {base_store} is a frozen artifact: re-trace it (`shoal trace models/{base}.yaml "
                     "--force`) so it is a shared graph + weights")
        need = manifest.total_bytes * len(missing)
        free = shutil.disk_usage(store.parent if store.parent.exists() else REPO).free
        if need > free - 5 * 2**30:
            sys.exit(f"{len(missing)} more models need {need / 1e9:.1f} GB and {free / 1e9:.1f} GB are free: "
                     "run a smaller --count")
        if base not in have:
            local.push(src.fetch(base), manifest)
        first = missing[0]
        print(f"synthesising {len(missing)} distinct models into {store} ({need / 1e9:.1f} GB) ...", flush=True)
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "shoal.cli", "models", "synth", "--from", base, "--count", str(count - first),
               "--seed", str(first), "--prefix", prefix, "--distinct", "--store", f"file://{store}"]
        subprocess.run(cmd, check=True, cwd=REPO)
        print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    return ids


def dir_bytes(path: Path) -> int:
    seen, total = set(), 0
    for f in path.rglob("*"):
        st = f.lstat()
        if f.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def scrape(url: str) -> dict[str, float]:
    """Sums over label sets of the counters and histograms this benchmark reads."""
    text = httpx.get(url + "/metrics", timeout=30).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(shoal_model_(?:cache_hits|cache_misses|loads)_total|shoal_load_shed_total|"
                     r"shoal_model_load_duration_seconds_(?:bucket|sum|count))(\{[^}]*\})? (\S+)$", line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        le = re.search(r'le="([^"]+)"', labels)
        key = f"{name}:{le.group(1)}" if le else name
        if 'result="failed"' in labels:
            key += ":failed"
        out[key] = out.get(key, 0.0) + value
    return out


def load_quantiles(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """P50/P90/P99 of swap-in times from the histogram's bucket deltas (upper bucket bounds)."""
    prefix = "shoal_model_load_duration_seconds_bucket:"
    buckets = sorted((float(k[len(prefix):]), after[k] - before.get(k, 0.0)) for k in after if k.startswith(prefix))
    total = buckets[-1][1] if buckets else 0
    out = {}
    for q in (50, 90, 99):
        bound = next((le for le, n in buckets if total and n >= q / 100 * total), float("nan"))
        out[f"p{q}_le_ms"] = bound * 1000
    return out


async def open_loop(url: str, chooser: ModelChooser, rate: float, seconds: float, seed: int,
                    timeout_s: float) -> tuple[list[float], dict[str, int], list[float], list[float]]:
    """Poisson arrivals; latency from the scheduled send time for every request, whatever its status."""
    endpoint = parse_base_url(url)
    pool = bodies()
    rng = random.Random(seed)
    idle: list[Connection] = []
    lat: list[float] = []
    ok_lat: list[float] = []
    hit_lat: list[float] = []  # 200s that found their model resident (no load_wait_ms in the timings)
    codes: dict[str, int] = {}
    tasks = []

    async def one(scheduled: float, model_id: str, body: bytes) -> None:
        conn = idle.pop() if idle else Connection(endpoint, timeout_s)
        try:
            resp = await conn.request("POST", f"/predictions/{model_id}", body)
            code = str(resp.status)
            idle.append(conn)
        except (HttpError, OSError, asyncio.TimeoutError) as exc:
            code = f"client:{type(exc).__name__}"
            conn.close()
        done = time.perf_counter()
        codes[code] = codes.get(code, 0) + 1
        lat.append((done - scheduled) * 1000)
        if code == "200":
            ok_lat.append((done - scheduled) * 1000)
            if b"load_wait_ms" not in resp.body:
                hit_lat.append((done - scheduled) * 1000)

    start = time.perf_counter()
    t = start
    while t < start + seconds:
        t += rng.expovariate(rate)
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(t, chooser.next(), rng.choice(pool))))
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.close()
    return lat, codes, ok_lat, hit_lat


def pct(data: list[float], q: float) -> float:
    s = sorted(data)
    return s[min(len(s) - 1, int(q / 100 * len(s)))] if s else float("nan")


def run_density(args: argparse.Namespace, store: Path, ids: list[str]) -> None:
    server = Server(["--store", f"file://{store}", "--models", ",".join(ids), "--memory-budget", args.budget,
                     "--preload", "none", *args.serve_args.split()],
                    env={"SHOAL_CACHE_DIR": str(args.cache_dir)})
    try:
        print(f"# {machine()}  store {dir_bytes(store) / 1e9:.1f} GB on disk for {len(ids)} models", flush=True)
        chooser = ModelChooser(f"zipf:{args.zipf}", ids, seed=args.seed)
        rates = [float(r) for r in args.rate_steps.split(",")] if args.rate_steps else [args.rate]
        if args.warmup > 0:
            asyncio.run(open_loop(server.url, chooser, rates[0], args.warmup, args.seed + 1, args.timeout))
        for step, rate in enumerate(rates):
            before, cpu0, t0 = scrape(server.url), server.cpu_seconds(), time.perf_counter()
            lat, codes, ok_lat, hit_lat = asyncio.run(open_loop(server.url, chooser, rate, args.duration,
                                                       args.seed + 2 + step, args.timeout))
            wall = time.perf_counter() - t0
            after, cpu = scrape(server.url), server.cpu_seconds() - cpu0
            hits = after.get("shoal_model_cache_hits_total", 0) - before.get("shoal_model_cache_hits_total", 0)
            misses = after.get("shoal_model_cache_misses_total", 0) - before.get("shoal_model_cache_misses_total", 0)
            loads = after.get("shoal_model_loads_total", 0) - before.get("shoal_model_loads_total", 0)
            failed = after.get("shoal_model_loads_total:failed", 0) - before.get("shoal_model_loads_total:failed", 0)
            n = after.get("shoal_model_load_duration_seconds_count", 0) - \
                before.get("shoal_model_load_duration_seconds_count", 0)
            total_s = after.get("shoal_model_load_duration_seconds_sum", 0) - \
                before.get("shoal_model_load_duration_seconds_sum", 0)
            listing = httpx.get(server.url + "/models", timeout=30).json()
            row = {
                "rate": rate, "seconds": args.duration, "requests": len(lat), "status": codes,
                "p50_ms": round(pct(lat, 50), 1), "p90_ms": round(pct(lat, 90), 1), "p99_ms": round(pct(lat, 99), 1),
                "max_ms": round(max(lat), 1) if lat else None,
                "ok_p90_ms": round(pct(ok_lat, 90), 1), "resident_p90_ms": round(pct(hit_lat, 90), 1),
                "hit_rate": round(hits / (hits + misses), 3) if hits + misses else None,
                "swapins_per_s": round(loads / wall, 2), "swapins_failed": failed,
                "swapin_mean_ms": round(total_s / n * 1000, 1) if n else None, **load_quantiles(before, after),
                "shed": after.get("shoal_load_shed_total", 0) - before.get("shoal_load_shed_total", 0),
                "resident_models": sum(1 for m in listing["models"] if m["state"] == "ready"),
                "resident_bytes": listing.get("resident_bytes"), "rss_gb": round(server.rss_bytes() / 1e9, 2),
                "server_cpu_cores": round(cpu / wall, 2),
            }
            print(json.dumps(row), flush=True)
    finally:
        server.stop()


def run_marginal(args: argparse.Namespace, store: Path, ids: list[str]) -> None:
    """Load models one by one (big budget): RSS added per model, swap-in time warm and cold."""
    server = Server(["--store", f"file://{store}", "--models", ",".join(ids), "--memory-budget", "1TiB",
                     "--preload", "none", *args.serve_args.split()], env={"SHOAL_CACHE_DIR": str(args.cache_dir)})
    try:
        print(f"# {machine()}", flush=True)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            c.post(f"/predictions/{ids[0]}", json={"text": "warm the graph"})  # the graph's one-time warm-up
            for model_id in ids[1:args.marginal + 1]:  # every file enters the disk cache (hashed once)
                c.post(f"/models/{model_id}/load")
            for model_id in ids[1:args.marginal + 1]:
                c.delete(f"/models/{model_id}")
            time.sleep(1.0)
            rows = []
            for model_id in ids[1:args.marginal + 1]:
                if args.cold:
                    _drop_page_cache(args.cache_dir, store, model_id)
                rss0 = server.rss_bytes()
                r = c.post(f"/predictions/{model_id}", json={"text": "a first request"})
                assert r.status_code == 200, r.text
                info = c.get(f"/models/{model_id}").json()
                rows.append({"id": model_id, "load_ms": info["load_ms"], "rss_added": server.rss_bytes() - rss0,
                             "counted": info["bytes"], "first_request_ms": r.json()["timings"]["total_ms"]})
        weights = rows[0]["counted"]
        print(json.dumps({
            "models": len(rows), "cold_page_cache": args.cold,
            "swapin_ms_median": round(statistics.median(r["load_ms"] for r in rows), 2),
            "swapin_ms_p90": round(pct([r["load_ms"] for r in rows], 90), 2),
            "first_request_ms_median": round(statistics.median(r["first_request_ms"] for r in rows), 2),
            "rss_added_mb_median": round(statistics.median(r["rss_added"] for r in rows) / 2**20, 2),
            "counted_mb": round(weights / 2**20, 2),
        }), flush=True)
    finally:
        server.stop()


def _drop_page_cache(cache_dir: Path, store: Path, model_id: str) -> None:
    """Evict the model's files from the page cache (POSIX_FADV_DONTNEED on every path that names them)."""
    for folder in [store / model_id, *cache_dir.glob(f"local/*/{model_id}")]:
        for f in folder.glob("*"):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--budget", default="4GiB")
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--rate-steps", default="", help="comma-separated rates, measured one after another")
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--warmup", type=float, default=30.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--timeout", type=float, default=60.0, help="client timeout per request (s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base", default="minilm-cls")
    ap.add_argument("--base-store", default=f"file://{REPO / 'store'}")
    ap.add_argument("--store", type=Path, default=REPO / ".shoal" / "density" / "store")
    ap.add_argument("--cache-dir", type=Path, default=REPO / ".shoal" / "density" / "cache")
    ap.add_argument("--serve-args", default="", help="extra `shoal serve` flags, e.g. '--load-workers 2'")
    ap.add_argument("--marginal", type=int, default=0, help="measure K sequential swap-ins instead")
    ap.add_argument("--cold", action="store_true", help="with --marginal: drop each model from the page cache")
    args = ap.parse_args()
    args.store.mkdir(parents=True, exist_ok=True)
    ids = ensure_fleet(args.store, args.base_store, args.base, args.count)
    if args.marginal:
        run_marginal(args, args.store, ids)
    else:
        run_density(args, args.store, ids)


if __name__ == "__main__":
    main()
