"""Check a plan against the instance catalog and size each server's share of its instance.

Why one module for both: every runtime that places servers on real machines (Kubernetes,
Docker) must refuse the same bad plans (unknown processor or instance type, a device the
instance lacks, servers that exceed their instance) before it writes or runs anything,
and must agree on how much CPU, memory and accelerator each server gets.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from shoal.devices import DEVICE_KIND, PROCESSORS, Device, parse_device
from shoal.errors import UsageError
from shoal.ids import is_valid_model_id
from shoal.pack.catalog import InstanceType, load_catalog, resolve
from shoal.pack.plan_file import Plan, ServerPlan

NEURON_CORES_PER_CHIP = {"inf1": 4, "inf2": 2}
MIB = 1 << 20
GIB = 1 << 30
RUNTIME_OVERHEAD = 768 * MIB  # python + torch + uvicorn before any model is loaded
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class ServerSizing:
    """One server with what it is given: requests, threads, budget, accelerator resources."""

    server: ServerPlan
    instance: InstanceType
    device: Device
    cpu_millis: int
    memory_bytes: int
    threads: int
    memory_budget: int
    accelerators: dict[str, int] = field(default_factory=dict)

    @property
    def neuron_cores(self) -> int:
        if self.device.kind != "neuron":
            return 0
        return (self.device.last or 0) - (self.device.first or 0) + 1

    @property
    def neuron_chips(self) -> list[int]:
        """Indices of the Inferentia chips (/dev/neuronN) that hold this server's cores."""
        if self.device.kind != "neuron":
            return []
        per = NEURON_CORES_PER_CHIP[self.server.processor]
        return list(range((self.device.first or 0) // per, (self.device.last or 0) // per + 1))


def allocatable(inst: InstanceType) -> tuple[int, int]:
    """(millicores, bytes) a node of this type offers to pods: an estimate of kubelet/system reserves
    and the daemonsets every node runs (CNI, kube-proxy, NodeLocal DNSCache, device plugin)."""
    cpu = inst.vcpu * 1000 - (300 + 10 * inst.vcpu)
    mem = inst.ram_bytes - (GIB + inst.ram_bytes * 4 // 100)
    return max(cpu, 100), max(mem, 256 * MIB)


def check_dns_label(value: str, what: str) -> str:
    """Kubernetes names (namespace, Service) must be DNS labels: one clear line if not."""
    if not _DNS_LABEL.match(value):
        raise UsageError(f"{what} {value!r} is not a DNS-1123 label: use 1-63 lower-case letters, digits "
                         "or '-', starting with a letter and ending with a letter or digit")
    return value


def _instance_type(cache: dict[str, InstanceType], catalog, server: ServerPlan, allow_local: bool) -> InstanceType:
    name = server.instance_type
    if name not in cache:
        spec = catalog.instance_types.get(name)
        if spec is not None and "auto" in (spec.vcpu, spec.ram_gib) and not allow_local:
            raise UsageError(f"server {server.name}: instance type {name!r} means this machine; a cluster needs "
                             "cloud instance types (run `shoal pack --instances inf1.6xlarge,...`)")
        try:
            cache[name] = resolve(catalog, name)
        except UsageError as exc:
            raise UsageError(f"server {server.name}: {exc}") from None
    return cache[name]


def _check_server(server: ServerPlan, inst: InstanceType) -> Device:
    if server.processor not in PROCESSORS:
        raise UsageError(f"server {server.name}: unknown processor {server.processor!r}; "
                         f"use one of {', '.join(PROCESSORS)}")
    if inst.processor != server.processor:
        raise UsageError(f"server {server.name}: processor {server.processor} cannot run on {inst.name}, "
                         f"whose devices are {inst.processor}")
    try:
        device = parse_device(server.device)
    except UsageError as exc:
        raise UsageError(f"server {server.name}: {exc}") from None
    if device.kind != DEVICE_KIND[server.processor]:
        raise UsageError(f"server {server.name}: device {server.device!r} does not match processor "
                         f"{server.processor} (expected {DEVICE_KIND[server.processor]}...)")
    limit = inst.vcpu if device.kind == "cpu" else inst.devices
    if device.last is not None and device.last >= limit:
        unit = {"cpu": "vCPUs", "cuda": "GPUs", "neuron": "NeuronCores"}[device.kind]
        raise UsageError(f"server {server.name}: device {server.device} exceeds its instance: "
                         f"{inst.name} has {limit} {unit}")
    for model_id in server.models:
        if not is_valid_model_id(model_id):
            raise UsageError(f"server {server.name}: invalid model id {model_id!r}")
    return device


def _check_capacity(instance: str, members: list[tuple[ServerPlan, Device]], inst: InstanceType,
                    gpu_slices: int) -> None:
    """Servers sharing one instance must fit it: slots, cores, device and host memory."""
    gib = lambda n: f"{n / GIB:.1f} GiB"  # noqa: E731
    # A machine type (`local`) has as many slots as the plan gave it (`shoal pack --servers N`).
    if inst.processor == "cpu" and not inst.machine and len(members) > inst.devices:
        raise UsageError(f"instance {instance} ({inst.name}) has {len(members)} servers but only "
                         f"{inst.devices} CPU slots")
    host = sum(s.memory_bytes for s, d in members if d.kind == "cpu")
    if host > inst.ram_bytes:
        raise UsageError(f"servers on instance {instance} need {gib(host)} of memory but {inst.name} has "
                         f"{gib(inst.ram_bytes)}")
    per_gpu: dict[int, list[ServerPlan]] = defaultdict(list)
    owner: dict[int, str] = {}
    for server, device in members:
        if device.kind == "cuda":
            per_gpu[device.first or 0].append(server)
        elif device.kind == "neuron":
            cores = range(device.first or 0, (device.last or 0) + 1)
            for core in cores:
                if core in owner:
                    raise UsageError(f"servers {owner[core]} and {server.name} both use NeuronCore {core} "
                                     f"of instance {instance}")
                owner[core] = server.name
            if server.memory_bytes > inst.device_memory_bytes * len(cores):
                raise UsageError(f"server {server.name} needs {gib(server.memory_bytes)} of device memory but "
                                 f"its {len(cores)} NeuronCore(s) on {inst.name} have "
                                 f"{gib(inst.device_memory_bytes * len(cores))}")
    for index, servers in per_gpu.items():
        if len(servers) > gpu_slices:
            raise UsageError(f"{len(servers)} servers share GPU {index} of instance {instance}, more than the "
                             f"{gpu_slices} time slices per GPU (--gpu-slices)")
        need = sum(s.memory_bytes for s in servers)
        if need > inst.device_memory_bytes:
            raise UsageError(f"servers on GPU {index} of instance {instance} need {gib(need)} but "
                             f"{inst.name} has {gib(inst.device_memory_bytes)} per GPU")
        compute = sum(s.compute_fraction for s in servers)
        if compute > 1.0 + 1e-6:
            raise UsageError(f"servers on GPU {index} of instance {instance} need {compute:.2f} of its compute")


def _accelerators(server: ServerPlan, device: Device, neuron_resource: str) -> dict[str, int]:
    if device.kind == "cuda":
        return {"nvidia.com/gpu": 1}
    if device.kind != "neuron":
        return {}
    cores = (device.last or 0) - (device.first or 0) + 1
    if neuron_resource == "neuroncore":
        return {"aws.amazon.com/neuroncore": cores}
    per = NEURON_CORES_PER_CHIP[server.processor]
    if (device.first or 0) % per or cores % per:
        raise UsageError(f"server {server.name}: device {server.device} is part of an Inferentia chip; "
                         "--neuron-resource device needs whole chips (use --neuron-resource neuroncore)")
    return {"aws.amazon.com/neuron": cores // per}


def _check_routing(plan: Plan) -> None:
    names = {s.name for s in plan.servers}
    for model_id, server in plan.routing.items():
        if server not in names:
            raise UsageError(f"plan routes model {model_id!r} to server {server!r}, which the plan does not have")
        if not is_valid_model_id(model_id):
            raise UsageError(f"plan routes invalid model id {model_id!r}")


def size_fleet(plan: Plan, *, catalog_path: Path | None = None, gpu_slices: int = 60,
               neuron_resource: str = "neuroncore", allow_local: bool = False) -> list[ServerSizing]:
    """Every server of ``plan``, checked and sized; raises UsageError (one line) on the first problem."""
    if not plan.servers:
        raise UsageError("the plan has no servers: run `shoal pack` with at least one model")
    if gpu_slices < 1:
        raise UsageError("--gpu-slices must be at least 1")
    if neuron_resource not in ("neuroncore", "device"):
        raise UsageError(f"--neuron-resource {neuron_resource!r}: use neuroncore or device")
    seen: set[str] = set()
    for server in plan.servers:
        check_dns_label(server.name, "server name")
        if server.name in seen:
            raise UsageError(f"the plan names server {server.name!r} twice")
        seen.add(server.name)
    _check_routing(plan)
    catalog = load_catalog(catalog_path)
    declared = {i.name: i.type for i in plan.instances}
    types: dict[str, InstanceType] = {}
    groups: dict[str, list[tuple[ServerPlan, Device]]] = defaultdict(list)
    for server in plan.servers:
        if declared and declared.get(server.instance, server.instance_type) != server.instance_type:
            raise UsageError(f"server {server.name}: instance {server.instance} is a {declared[server.instance]}, "
                             f"not a {server.instance_type}")
        inst = _instance_type(types, catalog, server, allow_local)
        groups[server.instance or server.name].append((server, _check_server(server, inst)))
    sized: list[ServerSizing] = []
    for instance, members in groups.items():
        inst = types[members[0][0].instance_type]
        mixed = {s.instance_type for s, _ in members} - {inst.name}
        if mixed:
            raise UsageError(f"instance {instance} is named with two types: {inst.name} and {mixed.pop()}")
        _check_capacity(instance, members, inst, gpu_slices)
        cpu_total, mem_total = allocatable(inst)
        per_gpu = defaultdict(int)
        for _, d in members:
            if d.kind == "cuda":
                per_gpu[d.first] += 1
        for server, device in members:
            cpu = cpu_total // len(members) // 10 * 10
            if device.kind == "cpu" and (device.cores or server.threads):
                cpu = min(cpu, len(device.cores or []) * 1000 or server.threads * 1000)
            mem = mem_total // len(members) // MIB * MIB
            if device.kind == "cpu":
                budget = max(mem - RUNTIME_OVERHEAD, 256 * MIB)
            elif device.kind == "cuda":
                budget = int(inst.device_memory_bytes * plan.max_memory / per_gpu[device.first])
            else:
                cores = (device.last or 0) - (device.first or 0) + 1
                budget = int(inst.device_memory_bytes * cores * plan.max_memory)
            sized.append(ServerSizing(server=server, instance=inst, device=device, cpu_millis=cpu,
                                      memory_bytes=mem, threads=max(1, cpu // 1000), memory_budget=budget,
                                      accelerators=_accelerators(server, device, neuron_resource)))
    order = {s.name: i for i, s in enumerate(plan.servers)}
    return sorted(sized, key=lambda z: order[z.server.name])
