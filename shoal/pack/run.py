"""``shoal pack`` without the CLI: models + catalog + limits -> plan and comparison rows.

Kept apart from ``cli.py`` so tests and benchmarks call the same code path the
command runs, and the command stays a thin layer of option parsing and printing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from shoal.errors import UsageError
from shoal.pack.assignment import Instance, Packing
from shoal.pack.catalog import load_catalog, resolve_many
from shoal.pack.demand import Demands, ModelLoad, build_demands, check_feasible, is_estimate, model_load
from shoal.pack.families import assign_families
from shoal.pack.heuristic import single_type
from shoal.pack.improve import balance, improve
from shoal.pack.plan_builder import to_plan
from shoal.pack.plan_file import Plan, SolverReport, load_plan
from shoal.pack.replan import moved, sticky_start
from shoal.pack.solver import Result, solve
from shoal.pack.sources import DEFAULT_RPS, load_models
from shoal.pack.synthetic import synthetic_family, synthetic_models


@dataclass
class PackRequest:
    instances: list[str]
    models: str | None = None
    store: str | None = None
    catalog: Path | None = None
    max_memory: float = 0.9
    max_compute: float = 0.83
    rps_per_model: float | None = None
    batch_size: int | None = None
    servers: int | None = None
    synthetic: int | None = None
    synthetic_family: int | None = None
    families: bool = True
    seed: int = 0
    previous: Path | None = None
    time_limit: float = 5.0
    base_port: int = 8080


@dataclass
class CandidateRow:
    """One line of the comparison table: every model on one instance type alone."""

    instance_type: str
    instances: int | None
    models_per_instance: float | None
    price_per_hour: float
    cost_per_hour: float | None
    price_per_model_hour: float | None
    note: str = ""


@dataclass
class PackOutcome:
    plan: Plan
    rows: list[CandidateRow]
    label: str
    result: Result
    seconds: float
    previous: Plan | None = None
    added: int = 0
    removed: int = 0
    fresh_cost: float | None = None
    warnings: list[str] = field(default_factory=list)


def check_request(req: PackRequest) -> None:
    if not 0 < req.max_memory <= 1:
        raise UsageError(f"--max-memory {req.max_memory:g}: must be a fraction in (0, 1]")
    if not 0 < req.max_compute <= 1:
        raise UsageError(f"--max-compute {req.max_compute:g}: must be a fraction in (0, 1]")
    if req.rps_per_model is not None and req.rps_per_model < 0:
        raise UsageError("--rps-per-model must not be negative")
    if req.synthetic is not None and req.synthetic < 1:
        raise UsageError("--synthetic must be at least 1")
    if req.synthetic_family is not None and req.synthetic_family < 2:
        raise UsageError("--synthetic-family must be at least 2")
    if req.synthetic is not None and req.models is not None:
        raise UsageError("give either --models or --synthetic, not both")
    if req.synthetic_family is not None and (req.models is not None or req.synthetic is not None):
        raise UsageError("give either --synthetic-family or --models / --synthetic, not both")
    if req.time_limit <= 0:
        raise UsageError("--time-limit must be positive")
    if not 1 <= req.base_port <= 65535:
        raise UsageError("--base-port must be a TCP port (1-65535)")


def gather(req: PackRequest) -> tuple[list[ModelLoad], str, str]:
    """(loads, store URI for the plan, label for the table).

    Members of a family of two or more packed models are charged their own bytes only (their
    family's shared bytes go once per server), unless ``families`` is off (``--no-families``).
    """
    if req.synthetic is not None or req.synthetic_family is not None:
        if req.synthetic is not None:
            pairs, label = synthetic_models(req.synthetic, req.seed), f"{req.synthetic} synthetic (seed {req.seed})"
        else:
            n = req.synthetic_family or 0
            pairs, label = synthetic_family(n, req.seed), f"{n} synthetic MiniLM family members (seed {req.seed})"
        manifests = [m for m, _ in pairs]
        loads = [model_load(m, req.rps_per_model if req.rps_per_model is not None else rps, req.batch_size)
                 for m, rps in pairs]
        uri = "synthetic"
    else:
        manifests, uri = load_models(req.models, req.store)
        rps = req.rps_per_model if req.rps_per_model is not None else DEFAULT_RPS
        loads = [model_load(m, rps, req.batch_size) for m in manifests]
        label = manifests[0].id if len(manifests) == 1 else f"{len(manifests)} models"
    if req.families:
        loads = assign_families(manifests, loads)
    return loads, uri, label


def candidate_rows(d: Demands, deadline: float) -> tuple[list[CandidateRow], list[Packing]]:
    """The reference's table: what each instance type costs if it served every model alone.

    Also returns those single-type packings (in ``d``'s type numbering) as solver seeds.
    """
    rows, packings = [], []
    for t, typ in enumerate(d.types):
        alone = d.only_types([t])
        p = single_type(alone, 0)
        if p is None:
            misfits = int((~d.ok[:, t]).sum())
            why = (f"{misfits} model{'s do' if misfits > 1 else ' does'} not fit" if misfits else
                   f"needs more than the {typ.max_count} that exist")
            rows.append(CandidateRow(typ.name, None, None, typ.price, None, None, why))
            continue
        p = improve(alone, p, deadline=min(deadline, time.monotonic() + 0.3))
        n_inst = len(p.instances)
        cost = p.cost(alone)
        rows.append(CandidateRow(typ.name, n_inst, d.n / n_inst, typ.price, cost, cost / d.n))
        packings.append(Packing([Instance(t, inst.devices) for inst in p.instances]))
    return rows, packings


def notes_for(d: Demands, loads: list[ModelLoad], plan: Plan, synthetic: bool) -> list[str]:
    """What a reader of the plan must know: estimated speeds, artifacts still to trace."""
    notes = []
    if synthetic:
        notes.append("synthetic profiles: a planning exercise, not deployable")
    for t in d.types:
        used = sum(1 for s in plan.servers if s.instance_type == t.name)
        if t.machine and t.devices > used:
            notes.append(f"{t.name}: {used} of its {t.devices} servers have models (fewer models than servers "
                         "would leave a server idle, so none is planned for it)")
    server_type = {s.name: s.instance_type for s in plan.servers}
    by_name = {t.name: t for t in d.types}
    for name in sorted(set(server_type.values())):
        t = by_name[name]
        n_est = sum(1 for x in loads if server_type.get(plan.routing.get(x.id, "")) == name and is_estimate(x, t))
        if n_est:
            notes.append(f"{name}: {n_est} models were profiled on cpu; their {t.accelerator} latency is an "
                         f"estimate ({t.speed:g}x the profiling CPU) until they are traced for {t.processor}, "
                         f"which deploying there needs anyway")
    return notes


def run_pack(req: PackRequest) -> PackOutcome:
    """Everything ``shoal pack`` does except printing and writing the file."""
    t0 = time.monotonic()
    check_request(req)
    catalog = load_catalog(req.catalog)
    types = resolve_many(catalog, req.instances, req.servers)
    loads, store_uri, label = gather(req)
    if not loads:
        raise UsageError("no models to pack")
    d = build_demands(loads, types, req.max_memory, req.max_compute)
    check_feasible(d, loads)
    previous = load_plan(req.previous) if req.previous else None
    rows, singles = candidate_rows(d, time.monotonic() + 2.0)
    start = sticky_start(d, previous) if previous is not None else None
    result = solve(d, time_limit=req.time_limit, start=start, singles=singles)
    packing = balance(d, result.packing)
    report = SolverReport(method=result.method, seconds=round(time.monotonic() - t0, 3),
                          cost_per_hour=round(result.cost, 6), lower_bound=round(result.lower_bound, 6),
                          gap=round(result.gap, 6), optimal=result.optimal)
    plan = to_plan(d, packing, loads, report, store=store_uri, base_port=req.base_port)
    plan.notes = notes_for(d, loads, plan, req.synthetic is not None or req.synthetic_family is not None)
    out = PackOutcome(plan, rows, label, result, 0.0, previous=previous)
    if previous is not None:
        report.moved_models = moved(previous, plan)
        out.added = sum(1 for m in plan.routing if m not in previous.routing)
        out.removed = sum(1 for m in previous.routing if m not in plan.routing)
        fresh = solve(d, time_limit=max(0.5, req.time_limit / 2), exact=False, singles=singles)
        out.fresh_cost = fresh.cost
        report.fresh_cost_per_hour = round(fresh.cost, 6)
    out.seconds = time.monotonic() - t0
    return out
