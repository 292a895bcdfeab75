"""The instance catalog and the model demands derived from profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.devices import usable_cores
from shoal.errors import UsageError
from shoal.pack.catalog import GIB, load_catalog, machine_ram_bytes, resolve, resolve_many
from shoal.pack.demand import build_demands, check_feasible, choose_batch, model_load, speed_on
from tests.pack_support import manifest

ISSUE_TYPES = [
    "inf1.xlarge", "inf1.2xlarge", "inf1.6xlarge", "inf1.24xlarge",
    "inf2.xlarge", "inf2.8xlarge", "inf2.24xlarge", "inf2.48xlarge",
    "g4dn.xlarge", "g4dn.2xlarge", "g4dn.4xlarge", "g4dn.8xlarge", "g4dn.12xlarge",
    "g5.xlarge", "g5.2xlarge", "g5.4xlarge", "g5.8xlarge", "g5.12xlarge",
    "c5.xlarge", "c6i.xlarge", "local",
]


def test_builtin_catalog_has_the_types_and_the_price_source() -> None:
    cat = load_catalog()
    assert set(ISSUE_TYPES) <= set(cat.instance_types)
    assert cat.prices_source and cat.prices_recorded and cat.region == "us-east-1"
    inf1 = resolve(cat, "inf1.6xlarge")
    assert 40 * inf1.price == pytest.approx(47.2)  # the reference's headline bill
    assert (inf1.processor, inf1.devices, inf1.device_memory_bytes) == ("inf1", 16, 2 * GIB)
    g12 = resolve(cat, "g4dn.12xlarge")
    assert (g12.processor, g12.devices, g12.device_memory_bytes) == ("gpu", 4, 16 * GIB)
    c5 = resolve(cat, "c5.xlarge")
    assert c5.devices == 2 and c5.device_memory_bytes == 4 * GIB


def test_local_is_this_machine() -> None:
    cat = load_catalog()
    local = resolve_many(cat, ["local"], servers=3)[0]
    assert local.devices == 3 and local.max_count == 1 and local.price == 0
    assert local.ram_bytes == machine_ram_bytes() and local.vcpu == usable_cores()
    assert local.device_memory_bytes == local.ram_bytes // 3
    assert [local.device_label(i) for i in range(3)] == ["cpu", "cpu", "cpu"]


def test_device_labels() -> None:
    cat = load_catalog()
    assert resolve(cat, "g4dn.12xlarge").device_label(3) == "cuda:3"
    assert resolve(cat, "inf1.6xlarge").device_label(5) == "neuron:5-5"
    assert resolve(cat, "c5.2xlarge").device_label(1) == "cpu:2-3"


@pytest.mark.parametrize("names,servers,match", [
    (["p9.huge"], None, "unknown instance type 'p9.huge'; known types: .*inf1.6xlarge"),
    (["g4dn.xlarge", "g4dn.xlarge"], None, "names a type twice"),
    ([""], None, "--instances is empty"),
    (["g4dn.xlarge"], 2, "--servers sets the server count of the 'local' type"),
    (["local"], 0, "--servers must be at least 1"),
])
def test_bad_instance_lists(names: list[str], servers: int | None, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        resolve_many(load_catalog(), names, servers)


@pytest.mark.parametrize("text,match", [
    ("accelerators: [1, 2\n", "not readable YAML"),
    ("- just a list\n", "must be a mapping"),
    ("accelerators: {}\n", "malformed at instance_types"),
    ("accelerators: {t4: {processor: gpu, memory_gib: 16, speed: 2}}\n"
     "instance_types: {x: {accelerator: a100, devices: 1, vcpu: 4, ram_gib: 8, price_per_hour: 1}}\n",
     "unknown accelerator 'a100'"),
    ("accelerators: {t4: {processor: gpu, memory_gib: 16, speed: 2}}\n"
     "instance_types: {x: {accelerator: t4, devices: 1, vcpu: 4, ram_gib: 8, price_per_hour: -1}}\n",
     "malformed at instance_types.x.price_per_hour"),
    ("accelerators: {t4: {processor: gpu, memory_gib: 16, speed: 2, colour: red}}\n"
     "instance_types: {}\n", "malformed at accelerators.t4.colour"),
    ("accelerators: {t4: {processor: tpu, memory_gib: 16, speed: 2}}\ninstance_types: {}\n",
     "malformed at accelerators.t4.processor"),
])
def test_malformed_catalogs_are_one_clear_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=match) as info:
        load_catalog(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_catalog(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_catalog(tmp_path / "nope.yaml")


def test_batch_size_follows_the_request_rate() -> None:
    lat = {1: 10.0, 2: 18.0, 4: 32.0, 8: 60.0}
    assert choose_batch(lat, 8, rps=1, max_delay_ms=2) == 1
    assert choose_batch(lat, 8, rps=400, max_delay_ms=2) == 4  # 400/s x 12 ms = 4.8 requests per window
    assert choose_batch(lat, 8, rps=10_000, max_delay_ms=2) == 8
    assert choose_batch(lat, 4, rps=10_000, max_delay_ms=2) == 4  # the manifest's max batch caps it
    assert choose_batch(lat, 8, rps=1, max_delay_ms=2, requested=6) == 4  # largest profiled size <= 6


def test_demand_from_a_profile() -> None:
    cat = load_catalog()
    m = manifest("a", resident_mib=512, b1_ms=40.0)
    load = model_load(m, rps=5.0)
    assert load.memory_bytes == 512 * 2**20 and load.batch_size == 1 and load.ms_per_request == 40.0
    types = resolve_many(cat, ["g4dn.xlarge", "local"])
    d = build_demands([load], types, 0.9, 0.83)
    t4 = types[0]
    assert d.mem[0, 0] == pytest.approx(512 / 16 / 1024)
    assert d.comp[0, 0] == pytest.approx(5 * 0.040 / t4.speed)  # cpu profile on a GPU: catalog estimate
    local = types[1]
    assert d.comp[0, 1] == pytest.approx(5 * 0.040 / (local.vcpu / local.devices / 2))


def test_artifacts_are_tied_to_their_processor() -> None:
    cat = load_catalog()
    inf1_model = model_load(manifest("n", processor="inf1"), rps=1.0)
    assert speed_on(inf1_model, resolve(cat, "g4dn.xlarge")) is None
    assert speed_on(inf1_model, resolve(cat, "inf1.xlarge")) == 1.0
    types = resolve_many(cat, ["g4dn.xlarge", "c5.xlarge"])
    d = build_demands([inf1_model], types, 0.9, 0.83)
    with pytest.raises(UsageError, match="traced for inf1 and cannot run on the candidate types"):
        check_feasible(d, [inf1_model])


def test_model_without_profile_is_refused() -> None:
    m = manifest("bare")
    m.profile = None
    with pytest.raises(UsageError, match="model bare has no measured profile"):
        model_load(m, 1.0)


def test_model_larger_than_any_device_names_model_and_device() -> None:
    cat = load_catalog()
    big = model_load(manifest("huge", resident_mib=30 * 1024), rps=0.1)
    types = resolve_many(cat, ["inf1.6xlarge", "g5.xlarge"])
    d = build_demands([big], types, 0.9, 0.83)
    with pytest.raises(UsageError, match=r"model huge needs 30.00 GiB but the largest device, a10g on g5.xlarge"):
        check_feasible(d, [big])


def test_too_hot_model_names_the_compute_limit() -> None:
    cat = load_catalog()
    hot = model_load(manifest("hot", b1_ms=100.0), rps=500.0)
    types = resolve_many(cat, ["g4dn.xlarge"])
    d = build_demands([hot], types, 0.9, 0.83)
    with pytest.raises(UsageError, match="model hot at 500 req/s keeps .* busy .* --max-compute is 83%"):
        check_feasible(d, [hot])
