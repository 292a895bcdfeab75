"""``shoal loadtest``: resolve options (flags over scenario over defaults), run, report.

Why a module apart from the typer signature: the CLI only parses flags; this
decides what the run is, so tests and ``shoal bench sweep`` call it directly.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from shoal.errors import ShoalError, UsageError
from shoal.loadtest import cost as costmod
from shoal.loadtest.engine import LoadSpec, Stage
from shoal.loadtest.payload import load_payloads
from shoal.loadtest.protocols import PATHS, check_protocol
from shoal.loadtest.report import LiveProgress, build_document, print_report, write_json
from shoal.loadtest.runner import RunResult, run_load, self_test
from shoal.loadtest.scenario import Scenario, load_scenario, parse_duration, parse_rate
from shoal.loadtest.stats import Recorder
from shoal.loadtest.targets import Routes, check_reachable, routes_from_plan, routes_from_target

CLIENT_BOUND_FACTOR = 3.0
MAX_LAG_S = 0.05


@dataclass
class LoadtestOptions:
    """Every flag of ``shoal loadtest``; None means 'not given' (the scenario or default decides)."""

    target: str | None = None
    plan: Path | None = None
    base_url_template: str | None = None
    host: str = "127.0.0.1"
    namespace: str = "shoal"
    model_ids: list[str] | None = None
    scenario: Path | None = None
    clients: int | None = None
    rate: float | None = None
    duration: str | None = None
    requests: int | None = None
    warmup: str | None = None
    models: str | None = None
    payload: str | None = None
    dns_cache: bool = False
    single: str | None = None
    workers: int | None = None
    timeout: str | None = None
    max_error_rate: float | None = None
    json_path: Path | None = None
    ceiling: str = "auto"
    ceiling_seconds: float = 2.0
    price_per_hour: float | None = None
    instance_type: str | None = None
    fps: float | None = None
    capacity: float | None = None
    seed: int = 0
    progress: bool = True
    protocol: str = "native"  # native | v2 | grpc
    extra_meta: dict = field(default_factory=dict)


@dataclass
class LoadtestOutcome:
    result: RunResult
    document: dict
    passed: bool


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "python": platform.python_version(),
            "load_average_1m_at_start": load}  # the machine may be shared: say how busy it was


def _routes(o: LoadtestOptions) -> Routes:
    if bool(o.target) == bool(o.plan):
        raise UsageError("give exactly one of --target URL or --plan plan.json")
    if o.protocol == "grpc":
        if o.plan:
            raise UsageError("--protocol grpc runs against one server: --target grpc://HOST:PORT (a plan "
                             "names only HTTP ports)")
        from shoal.loadtest.grpc_client import grpc_routes

        routes = grpc_routes(o.target, o.model_ids)  # type: ignore[arg-type]
    elif o.plan:
        routes = routes_from_plan(o.plan, o.model_ids, o.base_url_template, o.host, o.namespace)
        for server in sorted({routes.model_server[m] for m in routes.models}):
            check_reachable(routes.endpoints[server])
    else:
        assert o.target
        routes = routes_from_target(o.target, o.model_ids)
    return routes.with_dns_cache() if o.dns_cache else routes


def _spec(o: LoadtestOptions, sc: Scenario, routes: Routes, console: Console) -> tuple[LoadSpec, str]:
    clients = o.clients if o.clients is not None else sc.clients
    rate = o.rate if o.rate is not None else sc.rate
    if o.single and (o.rate is not None or o.clients is not None):
        raise UsageError("--single sends one request at a time: drop --clients and --rate")
    if o.clients is not None and o.rate is not None:
        raise UsageError("give --clients N (closed loop) or --rate R (open loop), not both")
    if o.rate is not None:
        clients = None
    if o.clients is not None:
        rate = None
    requests = o.requests if o.requests is not None else sc.requests
    dur_text = o.duration if o.duration is not None else sc.duration
    duration = parse_duration(dur_text, "--duration") if dur_text is not None else None
    if o.requests is not None and o.duration is None:
        duration = None
    if duration is None and requests is None and not o.single and not sc.stages:
        duration = 60.0
    warm = o.warmup if o.warmup is not None else sc.warmup
    spec = LoadSpec(
        clients=clients or 40, duration_s=duration, requests=requests,
        warmup_s=parse_duration(warm, "--warmup") if warm is not None else 0.0,
        models=o.models or sc.models or "random",
        timeout_s=parse_duration(o.timeout or sc.timeout or 30.0, "--timeout"), seed=o.seed, single=o.single,
        protocol=o.protocol, path_template=PATHS[o.protocol])
    if spec.clients < 1:
        raise UsageError("--clients must be at least 1")
    if o.single:
        if o.single not in ("sequential", "random"):
            raise UsageError(f"--single {o.single!r}: use sequential or random")
        return spec, f"single ({o.single}), {requests or 10} requests per model"
    if rate is not None or (sc.stages and o.clients is None):
        if rate is not None:
            if rate <= 0:
                raise UsageError("--rate must be positive")
            if duration is None:
                duration = requests / rate if requests else 60.0
            spec.stages = [Stage(rate, duration, f"{rate:g} req/s")]
        else:
            capacity = o.capacity or (sc.capacity if isinstance(sc.capacity, (int, float)) else None)
            if capacity is None and any(str(s.rate).strip().endswith("%") for s in sc.stages):
                if sc.capacity != "measure":
                    raise UsageError("the scenario's rates are % of capacity: pass --capacity R (req/s)")
                capacity = _measure_capacity(routes, o, sc, console)
            spec.stages = [Stage(parse_rate(s.rate, capacity), parse_duration(s.duration, "stage duration"),
                                 _stage_label(s.rate, capacity), s.max_error_rate) for s in sc.stages]
        return spec, "open loop (Poisson), " + " -> ".join(f"{s.rate:,.1f}/s for {s.duration_s:g}s"
                                                            for s in spec.stages)
    what = f"{requests:,} requests" if requests and duration is None else f"{duration:g}s"
    return spec, f"closed loop, {spec.clients} clients, {what}"


def _stage_label(rate: str | float, capacity: float | None) -> str:
    value = parse_rate(rate, capacity)
    return f"{rate} ({value:,.0f} req/s)" if str(rate).strip().endswith("%") else f"{value:g} req/s"


def _measure_capacity(routes: Routes, o: LoadtestOptions, sc: Scenario, console: Console) -> float:
    probe = LoadSpec(clients=sc.capacity_probe.clients, duration_s=parse_duration(sc.capacity_probe.duration),
                     warmup_s=1.0, models=o.models or sc.models or "random", seed=o.seed + 1, protocol=o.protocol,
                     path_template=PATHS[o.protocol])
    console.print(f"measuring capacity: {probe.clients} clients for {probe.duration_s:g}s", highlight=False)
    rec = run_load(routes, o.payload or sc.payload or "builtin", probe, o.workers or sc.workers or 1).overall
    if rec.throughput <= 0:
        raise ShoalError("capacity probe got no successful response: "
                         + "; ".join(f"{k}: {v}" for k, v in rec.error_examples.items()))
    console.print(f"capacity: {rec.throughput:,.1f} req/s (P95 {rec.hist.percentile_ms(95):.1f} ms)",
                  highlight=False)
    return rec.throughput


def _ceiling(o: LoadtestOptions, spec: LoadSpec, workers: int, console: Console) -> dict | None:
    if o.ceiling == "off" or (spec.single and o.ceiling == "auto"):
        return None  # one request at a time measures latency, never the generator's rate
    if o.ceiling == "auto" and spec.protocol == "grpc":
        return None  # the self-test measures the HTTP client; _warnings says so
    if o.ceiling != "auto":
        try:
            return {"rps": float(o.ceiling), "method": "given with --ceiling"}
        except ValueError:
            raise UsageError(f"--ceiling {o.ceiling!r}: use auto, off or a number of req/s") from None
    clients = max(spec.clients, 40)
    with console.status("measuring the generator's ceiling against a no-op server"):
        rec = self_test(clients, o.ceiling_seconds, workers)
    return {"rps": round(rec.throughput, 1), "p50_ms": rec.hist.percentile_ms(50),
            "method": f"self-test: {clients} clients, {workers} worker(s), {o.ceiling_seconds:g}s, no-op server"}


def _warnings(spec: LoadSpec, overall: Recorder, stages: list[Recorder], ceiling: dict | None,
              sc: Scenario, routes: Routes) -> list[str]:
    out = []
    if ceiling and ceiling.get("rps"):
        c = ceiling["rps"]
        reported = max([overall.throughput] + [s.offered_rate or 0.0 for s in stages])
        if reported * CLIENT_BOUND_FACTOR > c:
            out.append(f"{reported:,.0f} req/s is within {CLIENT_BOUND_FACTOR:g}x of the generator's ceiling "
                       f"({c:,.0f} req/s): this result may be client-bound, not a server figure; "
                       "add --workers or run the generator elsewhere")
    if spec.open_loop and overall.max_lag_s > MAX_LAG_S:
        out.append(f"the generator fell behind its arrival schedule by up to {overall.max_lag_s * 1000:,.0f} ms; "
                   "latencies include that lag")
    if sc.expect_models and len(routes.models) < sc.expect_models:
        out.append(f"the scenario expects {sc.expect_models} models but the target offers {len(routes.models)}")
    if spec.protocol == "grpc" and not spec.single and ceiling is None:
        out.append("the generator's ceiling is measured for the HTTP client only: with --protocol grpc, check "
                   "with --workers 2 that the rate does not rise (if it does, the client was the limit)")
    if overall.error_count:
        out.append(f"{overall.error_count:,} of {overall.total:,} requests failed ({overall.error_rate:.2%})")
    return out


def report_console() -> Console:
    """stdout; wide enough for the table when piped to a file or CI log."""
    c = Console()
    return c if c.is_terminal else Console(width=160)


def _limit(rec: Recorder, default: float) -> float:
    return rec.max_error_rate if rec.max_error_rate is not None else default


def run_loadtest(o: LoadtestOptions, console: Console | None = None, out: Console | None = None) -> LoadtestOutcome:
    """Run one load test; ``console`` gets status lines (stderr), ``out`` the report (stdout)."""
    console = console or Console(stderr=True)
    out = out or report_console()
    sc = load_scenario(o.scenario) if o.scenario else Scenario()
    if o.workers is not None and o.workers < 1:
        raise UsageError("--workers must be at least 1")
    workers = o.workers or sc.workers or 1
    check_protocol(o.protocol)
    payload = o.payload or sc.payload or "builtin"
    load_payloads(payload)  # a bad payload file fails before anything runs
    routes = _routes(o)
    spec, shape = _spec(o, sc, routes, console)
    ceiling = _ceiling(o, spec, workers, console)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    console.print(f"load test: {shape}, {spec.protocol} protocol, {len(routes.models)} model(s) ({spec.models}), "
                  f"{len(routes.endpoints)} server(s), {workers} worker(s)", highlight=False)
    with LiveProgress(console, o.progress) as live:
        result = run_load(routes, payload, spec, workers, live)
    overall = result.overall
    price = costmod.resolve_price(o.price_per_hour, o.instance_type, routes.price_per_hour)
    cost = costmod.cost_report(overall.throughput, price, len(routes.models), o.fps)
    warnings = _warnings(spec, overall, result.stages, ceiling, sc, routes)
    title = f"shoal loadtest: {shape}" + (f" [{sc.name}]" if sc.name else "")
    print_report(out, result.stages, overall, title, cost, ceiling, warnings)
    max_err = o.max_error_rate if o.max_error_rate is not None else (
        sc.max_error_rate if sc.max_error_rate is not None else 0.01)
    meta = {
        "tool": "shoal loadtest", "started_at": started, "scenario": sc.name or None,
        "protocol": spec.protocol,
        "mode": "single" if spec.single else ("open" if spec.open_loop else "closed"), "shape": shape,
        "clients": None if spec.open_loop or spec.single else spec.clients,
        "rate_rps": [s.rate for s in spec.stages] or None, "warmup_s": spec.warmup_s,
        "model_choice": spec.models, "models": len(routes.models), "payload": payload, "workers": workers,
        "targets": sorted({ep.url for ep in routes.endpoints.values()}), "dns_cache": o.dns_cache,
        "max_error_rate": max_err, "machine": machine_info(), **o.extra_meta,
    }
    doc = build_document(meta, result.stages, overall, cost, ceiling, warnings)
    failed = [r for r in result.stages if r.total == 0 or r.error_rate > _limit(r, max_err)]
    passed = overall.total > 0 and not failed
    doc["passed"] = passed
    doc["failed_windows"] = [{"label": r.label, "error_rate": round(r.error_rate, 6), "limit": _limit(r, max_err),
                              "requests": r.total} for r in failed]
    if o.json_path:
        write_json(o.json_path, doc)
        console.print(f"wrote {o.json_path}", highlight=False)
    return LoadtestOutcome(result, doc, passed)
