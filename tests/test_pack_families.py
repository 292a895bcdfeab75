"""The pack stage with model families: shared bytes paid once per server, families placed together."""

from __future__ import annotations

import math
import sys
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.pack.assignment import fits, load
from shoal.pack.bounds import lower_bound
from shoal.pack.catalog import GIB
from shoal.pack.demand import Demands, ModelLoad, build_demands
from shoal.pack.exact import solve_exact
from shoal.pack.families import assign_families, charge
from shoal.pack.improve import balance
from shoal.pack.plan_builder import to_plan
from shoal.pack.plan_file import SolverReport, load_plan
from shoal.pack.run import PackRequest, run_pack
from shoal.pack.solver import solve
from shoal.pack.synthetic import synthetic_family
from tests.pack_support import assert_valid, itype

MIB = 2**20


def member(i: int, family: str | None, own_mib: float, shared_mib: float, comp: float = 0.0) -> ModelLoad:
    """A model of ``own_mib`` (plus ``shared_mib`` held once per device by its family); ``comp``: device fraction."""
    return ModelLoad(id=f"m{i:03d}", processor="cpu", memory_bytes=int(own_mib * MIB), rps=comp * 1000.0,
                     batch_size=1, ms_per_request=1.0, threads=2, family=family,
                     shared_bytes=int(shared_mib * MIB) if family else 0)


def pack(loads: list[ModelLoad], devices: int = 1, max_memory: float = 0.9, max_compute: float = 0.9
         ) -> tuple[Demands, SolverReport, object]:
    d = build_demands(loads, [itype("a", devices, 1.0)], max_memory, max_compute)
    r = solve(d, time_limit=3.0)
    assert_valid(d, r.packing)
    assert r.lower_bound <= r.cost + 1e-6
    packing = balance(d, r.packing)
    assert_valid(d, packing)
    report = SolverReport(method=r.method, seconds=0, cost_per_hour=r.cost, lower_bound=r.lower_bound, gap=r.gap)
    return d, report, to_plan(d, packing, loads, report)


def test_shared_bytes_are_charged_once_per_server() -> None:
    loads = [member(i, "fam", 10, 500) for i in range(10)]
    d, _, plan = pack(loads)
    assert d.families is not None and d.mem[0, 0] == pytest.approx(10 * MIB / GIB)
    assert len(plan.servers) == 1  # 500 MiB once + 10 x 10 MiB, not 10 x 510 MiB
    server = plan.servers[0]
    assert server.memory_bytes == 500 * MIB + 10 * 10 * MIB
    assert server.memory_fraction == pytest.approx((500 + 100) * MIB / GIB, abs=1e-6)
    assert [(f.members, f.shared_bytes) for f in server.families] == [(10, 500 * MIB)]
    assert plan.families[0].servers == [server.name] and plan.families[0].members == 10
    without = [member(i, None, 510, 0) for i in range(10)]  # the same models charged in full
    assert len(pack(without)[2].servers) == 10


def test_a_family_split_over_two_servers_pays_twice() -> None:
    loads = [member(i, "fam", 10, 500, comp=0.4) for i in range(4)]  # compute: two per device
    d, _, plan = pack(loads)
    assert len(plan.servers) == 2
    assert [s.memory_bytes for s in plan.servers] == [520 * MIB, 520 * MIB]
    assert len(plan.families[0].servers) == 2
    assert load(d, 0, [0, 1])[0] == pytest.approx(520 * MIB / GIB)
    assert charge(d, 0, [0]) == charge(d, 0, [0, 1, 2, 3]) == pytest.approx(500 * MIB / GIB)


def test_families_stay_together_beside_other_models() -> None:
    loads = ([member(i, "a", 20, 300) for i in range(6)] + [member(10 + i, "b", 20, 300) for i in range(6)]
             + [member(20 + i, None, 200, 0) for i in range(3)])
    d, _, plan = pack(loads, devices=2)
    for fam in plan.families:
        assert len(fam.servers) == 1, fam  # 300 + 6 x 20 MiB: one device each
    assert sum(s.memory_bytes for s in plan.servers) == 2 * 300 * MIB + 12 * 20 * MIB + 3 * 200 * MIB


def test_a_member_that_fits_only_with_its_shared_bytes_counted_is_refused_alone() -> None:
    d = build_demands([member(0, "f", 500, 500), member(1, "f", 500, 500)], [itype("a")], 0.9, 0.9)
    assert not d.ok.any()  # 1000 MiB on a 1 GiB device at 90 %
    assert not fits(d, 0, [0])


def test_lone_family_members_and_models_without_family_pack_as_before() -> None:
    pairs = synthetic_family(3)
    manifests = [m for m, _ in pairs]
    from shoal.pack.demand import model_load

    plain = [model_load(m, 1.0) for m in manifests]
    assert assign_families(manifests[:1], plain[:1]) == plain[:1]  # a family of one: unchanged
    both = assign_families(manifests, plain)
    assert all(x.family is not None and x.memory_bytes < 1 * MIB and x.shared_bytes > 40 * MIB for x in both)
    assert build_demands(plain, [itype("a")], 0.9, 0.9).families is None


def test_a_thousand_members_need_far_fewer_servers() -> None:
    base = dict(instances=["c5.2xlarge"], synthetic_family=1000, time_limit=2.0)
    cold = dict(rps_per_model=0.05)
    with_f = run_pack(PackRequest(**base, **cold))  # type: ignore[arg-type]
    without = run_pack(PackRequest(**base, **cold, families=False))  # type: ignore[arg-type]
    assert len(with_f.plan.servers) * 8 <= len(without.plan.servers)
    assert with_f.plan.cost_per_hour < without.plan.cost_per_hour / 3
    assert len(with_f.plan.families) == 1 and not without.plan.families
    for outcome in (with_f, without):
        assert sorted(outcome.plan.routing) == [f"synth-minilm-{i:05d}" for i in range(1000)]
        for s in outcome.plan.servers:
            assert s.memory_fraction <= 0.9 + 1e-6 and s.compute_fraction <= 0.83 + 1e-6
            assert s.memory_bytes <= 0.9 * s.device_memory_bytes
    hot = run_pack(PackRequest(**base))  # type: ignore[arg-type]
    assert len(hot.plan.servers) < len(without.plan.servers)
    assert len(hot.plan.families[0].servers) == len(hot.plan.servers)  # only the family here: on every server


def test_families_mix_with_models_without_one() -> None:
    """Small compute-light members beside large models: family pieces fill the room the large ones leave."""
    rng = np.random.default_rng(5)
    loads = [member(i, f"f{i % 4}", 2, 100, comp=float(rng.uniform(0.02, 0.05))) for i in range(120)]
    loads += [member(200 + i, None, float(rng.uniform(200, 400)), 0, comp=0.02) for i in range(40)]
    d, report, plan = pack(loads, devices=4)
    comp_devices = float(d.comp[:, 0].sum()) / 0.9
    mem_devices = (float(d.mem[:, 0].sum()) + 4 * 100 * MIB / GIB) / 0.9
    assert len(plan.servers) <= math.ceil(max(comp_devices, mem_devices)) + 2
    assert report.cost_per_hour <= report.lower_bound * 1.25
    whole = [member(i, None, x.memory_bytes / MIB + x.shared_bytes / MIB, 0, comp=x.rps / 1000.0)
             for i, x in enumerate(loads)]
    assert plan.cost_per_hour < pack(whole, devices=4)[2].cost_per_hour


def test_replan_keeps_family_members_in_place(tmp_path: Path) -> None:
    first = run_pack(PackRequest(instances=["c5.2xlarge"], synthetic_family=200, time_limit=1.0))
    first.plan.save(tmp_path / "plan.json")
    again = run_pack(PackRequest(instances=["c5.2xlarge"], synthetic_family=200, time_limit=1.0,
                                 previous=tmp_path / "plan.json"))
    assert again.plan.solver is not None and again.plan.solver.moved_models == 0
    assert again.plan.cost_per_hour == pytest.approx(first.plan.cost_per_hour)
    assert load_plan(tmp_path / "plan.json").families[0].members == 200


def test_the_report_shows_families(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["shoal", "pack", "--synthetic-family", "300", "--instances", "c5.2xlarge",
                                      "--time-limit", "1", "-o", "plan.json"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    plan = load_plan(tmp_path / "plan.json")
    key = plan.families[0].key[:8]
    assert "families: shared bytes held once per server" in out and key in out and "43.0 MiB" in out


# -- properties ------------------------------------------------------------------------------------

def _strictly_fits(d: Demands, items: list[int]) -> bool:
    m, c = load(d, 0, items)
    return bool(d.ok[items, 0].all()) and m <= d.max_memory + 1e-12 and c <= d.max_compute + 1e-12


def _best_devices(d: Demands) -> int:
    """Fewest devices any packing of ``d`` on type 0 needs (brute force over assignments, n <= 6)."""
    best = d.n
    for assign in product(range(d.n), repeat=d.n):
        if max(assign) + 1 >= best or any(assign[i] > max(assign[:i], default=-1) + 1 for i in range(d.n)):
            continue  # canonical labelling only (device k opened after k-1)
        bins = [[i for i in range(d.n) if assign[i] == k] for k in range(max(assign) + 1)]
        if all(_strictly_fits(d, b) for b in bins):
            best = len(bins)
    return best


family_problem = st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.lists(st.integers(-1, 2), min_size=n, max_size=n),          # family per model (-1: none)
    st.lists(st.floats(0.0, 0.5), min_size=n, max_size=n),         # own memory (device fraction)
    st.lists(st.floats(0.0, 0.6), min_size=n, max_size=n),         # compute
    st.lists(st.floats(0.0, 0.6), min_size=3, max_size=3),         # shared memory per family
    st.integers(1, 3)))                                            # devices per instance


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(family_problem)
def test_plans_are_valid_and_the_bound_is_below_the_optimum(p: tuple) -> None:
    fam, own, comp, shared, devices = p
    loads = [ModelLoad(id=f"m{i}", processor="cpu", memory_bytes=int(own[i] * GIB), rps=comp[i] * 1000.0,
                       batch_size=1, ms_per_request=1.0, threads=2, family=f"f{fam[i]}" if fam[i] >= 0 else None,
                       shared_bytes=int(shared[fam[i]] * GIB) if fam[i] >= 0 else 0) for i in range(len(fam))]
    d = build_demands(loads, [itype("a", devices, 1.0)], 0.9, 0.9)
    if not d.ok.all():
        return
    r = solve(d, time_limit=3.0)
    assert_valid(d, r.packing)
    assert_valid(d, balance(d, r.packing))
    optimum = math.ceil(_best_devices(d) / devices) * 1.0
    bound = lower_bound(d).value
    assert bound <= optimum * (1 + 1e-6) + 1e-9, (bound, optimum)
    assert r.lower_bound <= optimum * (1 + 1e-6) + 1e-9
    assert r.cost >= optimum - 1e-9
    exact = solve_exact(d, float("inf"), 10.0)  # shared bytes through one variable per family and device
    assert exact.packing is not None
    assert_valid(d, exact.packing)
    if exact.optimal:
        assert exact.packing.cost(d) == pytest.approx(optimum)
