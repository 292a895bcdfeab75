"""`shoal bench sweep`: batch size x clients x precision, in-process and served.

Why both paths: the in-process limit says what the model can do on this CPU; the
served path says what users get. Each served point is a real ``shoal serve``
started with ``SHOAL_MAX_BATCH_SIZE=B`` and loaded by the same generator as
``shoal loadtest`` (closed loop, pooled histogram).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from shoal.errors import ShoalError, UsageError
from shoal.loadtest import cost as costmod
from shoal.loadtest.engine import LoadSpec
from shoal.loadtest.knee import KNEE_FRACTION, knee  # noqa: F401 (re-exported)
from shoal.loadtest.runner import run_load
from shoal.loadtest.served import ServerProcess
from shoal.loadtest.targets import Routes, parse_base_url
from shoal.store.base import ModelStore

CSV_FIELDS = ["precision", "model_id", "path", "batch_size", "clients", "throughput", "p50_ms", "p95_ms",
              "p99_ms", "requests", "errors", "usd_per_million"]


@dataclass
class SweepOptions:
    models: dict[str, str]  # precision -> model id in the store
    store_uri: str
    batch_sizes: list[int]
    clients: list[int]
    out: Path
    duration_s: float = 5.0
    warmup_s: float = 1.0
    inprocess_seconds: float = 2.0
    threads: int | None = None
    target: str | None = None
    served: bool = True
    inprocess: bool = True
    price: costmod.Price | None = None
    workers: int = 1
    server_settings: dict[str, str] = field(default_factory=dict)
    log: Callable[[str], None] = print


def resolve_models(store: ModelStore, model: str, precisions: list[str] | None) -> dict[str, str]:
    """precision -> id: ``model`` itself if its manifest has that precision, else ``model-<precision>``."""
    if not precisions:
        return {store.read_manifest(model).precision: model}
    out = {}
    for p in precisions:
        for cand in (model, f"{model}-{p}"):
            if store.exists(cand) and store.read_manifest(cand).precision == p:
                out[p] = cand
                break
        else:
            raise UsageError(f"no {p} version of {model} in {store.uri}: trace one as {model}-{p}, or pass "
                             f"--spec models/{model}.yaml to let the sweep trace it")
    return out


def trace_precisions(spec_path: Path, precisions: list[str], store: ModelStore, build_dir: Path,
                     log: Callable[[str], None]) -> dict[str, str]:
    """Trace the catalog entry once per precision as ``<id>-<precision>`` (skipped when up to date)."""
    from shoal.spec import load_spec
    from shoal.trace.stage import TraceOptions, trace_spec

    spec = load_spec(spec_path)
    out = {}
    for p in precisions:
        copy = spec.model_copy(update={"id": f"{spec.id}-{p}"})
        log(f"tracing {copy.id} ({p})")
        manifest, _ = trace_spec(copy, store, TraceOptions(precision=p, build_dir=build_dir))
        out[p] = manifest.id
    return out


def _inprocess_rows(o: SweepOptions, store: ModelStore) -> list[dict]:
    """All precisions in one child process (one torch start-up), one model after another."""
    manifests = {p: store.read_manifest(mid) for p, mid in o.models.items()}
    for m in manifests.values():
        if m.kind != "text" or not m.seq_len:
            raise UsageError(f"{m.id} is a {m.kind} model: the in-process sweep handles text models")
    folders = [str(store.fetch(m.id)) for m in manifests.values()]
    cmd = [sys.executable, "-m", "shoal.loadtest.inprocess", *folders,
           "--seq-lens", ",".join(str(m.seq_len) for m in manifests.values()),
           "--batch-sizes", ",".join(map(str, o.batch_sizes)), "--seconds", str(o.inprocess_seconds),
           "--threads", str(o.threads or 0)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ShoalError(f"in-process benchmark of {', '.join(o.models.values())} failed: {tail}")
    rows = []
    for (precision, model_id), results in zip(o.models.items(), json.loads(proc.stdout)):
        for r in results:
            o.log(f"  in-process {precision} batch {r['batch_size']}: {r['throughput']:,.1f} inferences/s, "
                  f"P95 {r['p95_ms']:.1f} ms per batch")
            rows.append({"precision": precision, "model_id": model_id, "path": "inprocess",
                         "batch_size": r["batch_size"], "clients": None, "throughput": r["throughput"],
                         "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"], "p99_ms": r["p99_ms"],
                         "requests": r["iterations"] * r["batch_size"], "errors": 0})
    return rows


def _served_points(o: SweepOptions, url: str, precision: str, model_id: str, batch: int | None) -> list[dict]:
    ep = parse_base_url(url)
    routes = Routes({"s": ep}, {model_id: "s"}, {model_id: None})
    rows = []
    prime = LoadSpec(clients=1, duration_s=None, requests=1, timeout_s=300.0)
    run_load(routes, "builtin", prime)  # first request loads the model; not measured
    for c in o.clients:
        spec = LoadSpec(clients=c, duration_s=o.duration_s, warmup_s=o.warmup_s, timeout_s=60.0)
        rec = run_load(routes, "builtin", spec, o.workers).overall
        lat = rec.hist.summary_ms()
        o.log(f"  served {precision} batch {batch or 'server'} clients {c}: {rec.throughput:,.1f} req/s, "
              f"P95 {lat['p95']:.1f} ms, {rec.error_count} errors")
        rows.append({"precision": precision, "model_id": model_id, "path": "served", "batch_size": batch,
                     "clients": c, "throughput": round(rec.throughput, 2), "p50_ms": lat["p50"], "p95_ms": lat["p95"],
                     "p99_ms": lat["p99"], "requests": rec.total, "errors": rec.error_count})
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per precision and path: best throughput per batch size and the knee."""
    out: dict = {}
    for r in rows:
        key = f"{r['precision']}/{r['path']}"
        best = out.setdefault(key, {"throughput_by_batch": {}})["throughput_by_batch"]
        b = r["batch_size"]
        if b is not None and r["throughput"] > best.get(b, 0.0):
            best[b] = r["throughput"]
    for v in out.values():
        v["knee_batch_size"] = knee(sorted(v["throughput_by_batch"].items()))
    return out


def run_sweep(o: SweepOptions, store: ModelStore) -> dict:
    rows: list[dict] = []
    o.out.mkdir(parents=True, exist_ok=True)
    if o.inprocess:
        o.log(f"in-process: {', '.join(o.models.values())}, batch sizes {o.batch_sizes}")
        rows += _inprocess_rows(o, store)
    if o.served and o.target:
        for precision, model_id in o.models.items():
            rows += _served_points(o, o.target, precision, model_id, None)
    elif o.served:
        # One server per batch size serves every precision's model (loaded on its first request).
        for b in o.batch_sizes:
            settings = {"max_batch_size": str(b), "preload": "none", **o.server_settings}
            log_path = o.out / "logs" / f"serve-b{b}.log"
            o.log(f"served: shoal serve with max batch size {b}")
            with ServerProcess(o.store_uri, log_path, settings, models=list(o.models.values())) as srv:
                for precision, model_id in o.models.items():
                    rows += _served_points(o, srv.url, precision, model_id, b)
    for r in rows:
        per_m = costmod.per_million(r["throughput"], o.price) if o.price else None
        r["usd_per_million"] = None if per_m is None else round(per_m, 6)
    from shoal.loadtest.command import machine_info

    doc = {"tool": "shoal bench sweep", "machine": machine_info(), "models": o.models, "batch_sizes": o.batch_sizes, "clients": o.clients,
           "duration_s": o.duration_s, "warmup_s": o.warmup_s, "target": o.target,
           "price": {"per_hour": o.price.per_hour, "basis": o.price.basis} if o.price else None,
           "knee_rule": f"smallest batch size reaching {KNEE_FRACTION:.0%} of the best throughput",
           "summary": summarise(rows), "rows": rows}
    write_outputs(o.out, doc)
    return doc


def write_outputs(out: Path, doc: dict) -> list[Path]:
    from shoal.loadtest.plots import plot_all

    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(doc, indent=2))
    with open(out / "sweep.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in doc["rows"]:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    return plot_all(doc, out)
