"""Re-planning: running servers keep their models unless a limit or the bill says otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.pack.assignment import violations
from shoal.pack.plan_file import Plan
from shoal.pack.run import PackRequest, run_pack
from shoal.store.local import LocalStore
from tests.pack_support import manifest, push


def _store(tmp_path: Path, sizes: dict[str, float]) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    for model_id, mib in sizes.items():
        push(store, tmp_path, manifest(model_id, resident_mib=mib, b1_ms=30))
    return store


def _pack(tmp_path: Path, instances: list[str], previous: Plan | None = None, rps: float = 1.0) -> Plan:
    prev = None
    if previous is not None:
        prev = tmp_path / "previous.json"
        previous.save(prev)
    req = PackRequest(instances=instances, store=f"file://{tmp_path / 'store'}", previous=prev, rps_per_model=rps)
    return run_pack(req).plan


def _valid(plan: Plan) -> None:
    assert len({s.name for s in plan.servers}) == len(plan.servers)
    assert sorted(m for s in plan.servers for m in s.models) == sorted(plan.routing)
    for s in plan.servers:
        assert s.memory_fraction <= plan.max_memory + 1e-9 and s.compute_fraction <= plan.max_compute + 1e-9


def test_adding_models_moves_nobody(tmp_path: Path) -> None:
    store = _store(tmp_path, {f"m{i:02d}": 200 + 37 * i for i in range(30)})
    first = _pack(tmp_path, ["inf1.xlarge"])
    for i in range(30, 36):
        push(store, tmp_path, manifest(f"m{i:02d}", resident_mib=150, b1_ms=30))
    second = _pack(tmp_path, ["inf1.xlarge"], previous=first)
    _valid(second)
    assert second.solver is not None and second.solver.moved_models == 0
    assert all(second.routing[m] == s for m, s in first.routing.items())
    assert {i.name for i in first.instances} <= {i.name for i in second.instances}


def test_removing_models_frees_an_instance_when_it_pays(tmp_path: Path) -> None:
    """After most models leave, consolidating into fewer instances is worth the moves."""
    store = _store(tmp_path, {f"m{i:02d}": 400 for i in range(40)})
    first = _pack(tmp_path, ["inf1.xlarge"])
    for i in range(0, 40, 2):
        store.remove(f"m{i:02d}")
    second = _pack(tmp_path, ["inf1.xlarge"], previous=first)
    _valid(second)
    assert len(second.instances) < len(first.instances)
    assert second.solver is not None and second.solver.moved_models is not None
    moved = sum(1 for m, s in second.routing.items() if first.routing[m] != s)
    assert second.solver.moved_models == moved


def test_hotter_models_leave_an_overloaded_device(tmp_path: Path) -> None:
    _store(tmp_path, {f"m{i:02d}": 100 for i in range(12)})
    first = _pack(tmp_path, ["g4dn.xlarge"], rps=1.0)
    second = _pack(tmp_path, ["g4dn.xlarge"], previous=first, rps=80.0)
    _valid(second)
    assert len(second.servers) > len(first.servers)


def test_a_dropped_instance_type_moves_its_models(tmp_path: Path) -> None:
    _store(tmp_path, {f"m{i:02d}": 300 for i in range(10)})
    first = _pack(tmp_path, ["inf1.xlarge"])
    second = _pack(tmp_path, ["g4dn.xlarge"], previous=first)
    _valid(second)
    assert {i.type for i in second.instances} == {"g4dn.xlarge"}
    assert second.solver is not None and second.solver.moved_models == 10


def test_sticky_start_is_a_valid_packing(tmp_path: Path) -> None:
    """Shrinking the local fleet: models on servers that no longer exist are re-placed."""
    from shoal.pack.catalog import load_catalog, resolve_many
    from shoal.pack.demand import build_demands, model_load
    from shoal.pack.replan import sticky_start

    store = _store(tmp_path, {f"m{i:02d}": 100 for i in range(9)})
    req = PackRequest(instances=["local"], servers=3, store=f"file://{tmp_path / 'store'}")
    first = run_pack(req).plan
    assert len(first.servers) == 3
    types = resolve_many(load_catalog(), ["local"], servers=2)
    loads = [model_load(m, 1.0) for m in store.manifests()]
    d = build_demands(loads, types, 0.9, 0.83)
    p = sticky_start(d, first)
    assert not violations(d, p)
    assert sum(1 for inst in p.instances for dev in inst.devices if dev) <= 2


@pytest.mark.parametrize("servers", [1, 3])
def test_local_servers_get_consecutive_ports(tmp_path: Path, servers: int) -> None:
    _store(tmp_path, {f"m{i}": 100 for i in range(4)})
    plan = run_pack(PackRequest(instances=["local"], servers=servers, store=f"file://{tmp_path / 'store'}")).plan
    assert [s.port for s in plan.servers] == list(range(8080, 8080 + servers))
    assert [s.device_index for s in plan.servers] == list(range(servers))
