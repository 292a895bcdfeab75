"""The solver: known optima, proven bounds, and properties every packing must have."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.errors import UsageError
from shoal.pack.bounds import dff_eps, dff_u, lower_bound
from shoal.pack.catalog import load_catalog, resolve_many
from shoal.pack.demand import build_demands, model_load
from shoal.pack.exact import solve_exact
from shoal.pack.greedy import best_fit_decreasing, min_slack, pack_type, spread
from shoal.pack.improve import balance
from shoal.pack.plan_builder import dns_label, to_plan
from shoal.pack.plan_file import SolverReport
from shoal.pack.solver import solve
from shoal.pack.synthetic import synthetic_models
from tests.pack_support import assert_valid, demands, itype, loads_for


def test_two_per_device_needs_two_devices() -> None:
    d = demands([0.45] * 4, None, [itype("a")])
    r = solve(d)
    assert_valid(d, r.packing)
    assert r.cost == pytest.approx(2.0) and r.optimal


def test_mixed_types_beat_either_alone() -> None:
    """Five models that each need a whole device: a 4-device box plus a 1-device box."""
    d = demands([0.6] * 5, None, [itype("one", 1, 1.0), itype("four", 4, 3.0)])
    r = solve(d)
    assert_valid(d, r.packing)
    assert r.cost == pytest.approx(4.0) and r.optimal
    assert sorted(d.types[i.type].name for i in r.packing.instances) == ["four", "one"]


def test_compute_limit_binds() -> None:
    """Memory is tiny but each model keeps half a device busy: one model per device."""
    d = demands([0.01] * 3, [0.5] * 3, [itype("one", 1, 1.0), itype("two", 2, 1.5)], max_compute=0.83)
    r = solve(d)
    assert_valid(d, r.packing)
    assert r.cost == pytest.approx(2.5) and r.optimal


def test_memory_heavy_pairs_with_compute_heavy() -> None:
    d = demands([0.8, 0.8, 0.1, 0.1], [0.1, 0.1, 0.8, 0.8], [itype("a")])
    r = solve(d)
    assert_valid(d, r.packing)
    assert r.cost == pytest.approx(2.0)
    assert all(sorted(dev) in ([0, 2], [0, 3], [1, 2], [1, 3]) for inst in r.packing.instances
               for dev in inst.devices)


def test_exact_solver_beats_the_greedy_rules_on_small_problems() -> None:
    """Seven models fit three devices only one way; the greedy rules need four, HiGHS proves three."""
    mem = [0.32, 0.58, 0.38, 0.23, 0.22, 0.54, 0.21]
    comp = [0.07, 0.17, 0.35, 0.33, 0.49, 0.34, 0.17]
    d = demands(mem, comp, [itype("one", 1, 1.0), itype("three", 3, 2.5)])
    greedy = solve(d, exact=False)
    r = solve(d)
    assert_valid(d, r.packing)
    assert greedy.cost == pytest.approx(4.0)
    assert r.cost == pytest.approx(2.5) and r.optimal and r.method.startswith("exact")


def test_tiny_demands_do_not_fool_the_milp() -> None:
    """Found by hypothesis: with a 6e-8 compute demand HiGHS's MIP presolve called 4 optimal."""
    d = demands([0.5, 0.5, 0.75, 0.25], [0.5, 5.960464477539063e-08, 0.0, 0.0], [itype("a"), itype("b")])
    exact = solve_exact(d, 3.0, 10.0)
    assert exact.optimal and exact.packing is not None and exact.packing.cost(d) == pytest.approx(3.0)
    assert solve(d).cost == pytest.approx(3.0)


def test_bound_charges_for_big_models() -> None:
    """Three models of 0.55: capacity says 2 devices, any packing needs 3; the DFF rows see it."""
    d = demands([0.55 * 0.9] * 3, None, [itype("a")])
    assert lower_bound(d).value == pytest.approx(3.0)


def test_limited_type_that_cannot_hold_everything_names_the_constraint() -> None:
    d = demands([0.5] * 5, None, [itype("local", 2, 0.0, max_count=1)])
    with pytest.raises(UsageError, match="memory"):
        solve(d)


def test_limited_types_fall_back_to_the_exact_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    """When no greedy packing fits the one local machine, the MILP still finds one."""
    import shoal.pack.solver as solver

    def refuse(*_a: object, **_k: object) -> None:
        raise UsageError("greedy rules found nothing")

    monkeypatch.setattr(solver, "guided", refuse)
    monkeypatch.setattr(solver, "single_type", lambda *_a: None)
    d = demands([0.8, 0.8, 0.1, 0.1], [0.1, 0.1, 0.8, 0.8], [itype("local", 2, 0.0, max_count=1)])
    r = solve(d)
    assert_valid(d, r.packing)
    assert r.method.startswith("exact") and len(r.packing.instances) == 1


def test_dual_feasible_functions_are_valid() -> None:
    """sum(x) <= 1 must imply sum(f(x)) <= 1 for every f used in the bound."""
    rng = np.random.default_rng(1)
    for _ in range(2000):
        x = rng.dirichlet(np.ones(rng.integers(1, 8))) * rng.uniform(0.5, 1.0)
        for k in range(1, 11):
            assert dff_u(x, k).sum() <= 1 + 1e-9
        for e in (0.1, 0.2, 0.3, 0.4):
            assert dff_eps(x, e).sum() <= 1 + 1e-9


def test_packers_respect_limits_and_place_everything() -> None:
    rng = np.random.default_rng(3)
    d = demands(rng.uniform(0.02, 0.4, 300), rng.uniform(0, 0.3, 300), [itype("a")])
    for bins in (best_fit_decreasing(d, np.arange(d.n), 0), spread(d, np.arange(d.n), 0, 40),
                 min_slack(d, np.arange(d.n), 0), pack_type(d, np.arange(d.n), 0)):
        assert sorted(m for b in bins for m in b) == list(range(d.n))
        for b in bins:
            assert d.mem[b, 0].sum() <= 0.9 + 1e-9 and d.comp[b, 0].sum() <= 0.9 + 1e-9


def test_balance_spreads_models_over_an_instance() -> None:
    d = demands([0.1] * 6, None, [itype("three", 3, 1.0)])
    r = solve(d)
    spread_out = balance(d, r.packing)
    assert_valid(d, spread_out)
    assert [len(dev) for dev in spread_out.instances[0].devices] == [2, 2, 2]


def test_dns_labels() -> None:
    assert dns_label("shoal-inf1.6xlarge-0-3") == "shoal-inf1-6xlarge-0-3"
    assert dns_label("9 Weird__Name") == "i-9-weird-name"
    long = dns_label("x" * 100)
    assert len(long) <= 63 and long[0].isalpha()


problem = st.integers(1, 9).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0.01, 0.9), min_size=n, max_size=n),
    st.lists(st.floats(0.0, 0.9), min_size=n, max_size=n),
    st.lists(st.tuples(st.integers(1, 4), st.floats(0.1, 5.0)), min_size=1, max_size=3)))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem)
def test_properties_of_any_plan(p: tuple[list[float], list[float], list[tuple[int, float]]]) -> None:
    """Every model placed exactly once, no device over a limit, cost = sum of instance prices,
    bound <= cost, and on problems this small the exact solver proves the optimum."""
    mem, comp, kinds = p
    types = [itype(f"t{i}", dev, round(price, 3)) for i, (dev, price) in enumerate(kinds)]
    d = demands(mem, comp, types)
    r = solve(d, time_limit=5.0)
    assert_valid(d, r.packing)
    assert r.lower_bound <= r.cost + 1e-6
    plan = to_plan(d, balance(d, r.packing), loads_for(d), SolverReport(method="t", seconds=0, cost_per_hour=r.cost,
                                                                 lower_bound=r.lower_bound, gap=r.gap))
    assert sorted(plan.routing) == sorted(d.ids)
    assert sorted(m for s in plan.servers for m in s.models) == sorted(d.ids)
    assert plan.cost_per_hour == pytest.approx(sum(i.price_per_hour for i in plan.instances))
    assert plan.cost_per_hour == pytest.approx(r.cost)
    for s in plan.servers:
        assert s.memory_fraction <= 0.9 + 1e-6 and s.compute_fraction <= 0.9 + 1e-6
    exact = solve_exact(d, r.cost, 10.0)
    if exact.optimal:
        assert r.cost == pytest.approx(exact.packing.cost(d) if exact.packing else r.cost)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(20, 150), st.integers(0, 10_000), st.sampled_from([
    ["inf1.xlarge", "inf1.6xlarge"], ["g4dn.xlarge", "g4dn.12xlarge", "inf2.xlarge"], ["c6i.2xlarge", "g5.xlarge"]]),
    st.floats(0.1, 20.0))
def test_properties_on_catalog_types(n: int, seed: int, names: list[str], rps_scale: float) -> None:
    """Larger mixed problems on real catalog types: still valid, bound below cost."""
    types = resolve_many(load_catalog(), names)
    loads = [model_load(m, rps * rps_scale) for m, rps in synthetic_models(n, seed=seed)]
    d = build_demands(loads, types, 0.9, 0.83)
    d = d.subset(np.flatnonzero(d.ok.any(axis=1)))
    r = solve(d, time_limit=2.0)
    assert_valid(d, r.packing)
    assert r.lower_bound <= r.cost + 1e-6


def test_three_thousand_synthetic_models_within_two_percent() -> None:
    """The benchmark's instance: quality (not speed) is asserted here."""
    types = resolve_many(load_catalog(), ["inf1.6xlarge", "g4dn.xlarge", "g4dn.12xlarge"])
    loads = [model_load(m, rps) for m, rps in synthetic_models(3000, seed=0)]
    d = build_demands(loads, types, 0.9, 0.83)
    r = solve(d, time_limit=10.0)
    assert_valid(d, r.packing)
    assert r.gap <= 0.02
