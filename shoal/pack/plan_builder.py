"""Turn a solved packing into ``plan.json``: names, devices, ports, loads, routing.

Names are DNS-1035 labels because deploy turns every server into a Kubernetes Service:
instance ``inf1-6xlarge-3``, its servers ``shoal-inf1-6xlarge-3-0`` ... (device index
last). Ports count up from the base port per instance, so the servers sharing a
machine (``local``) listen on 8080, 8081, ...
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone

import numpy as np

from shoal.pack.assignment import Packing, load
from shoal.pack.demand import Demands, ModelLoad
from shoal.pack.families import placements
from shoal.pack.plan_file import FamilyOnServer, FamilyPlan, InstancePlan, Plan, ServerPlan, SolverReport

_NOT_LABEL = re.compile(r"[^a-z0-9-]+")


def dns_label(text: str, max_len: int = 63) -> str:
    """``text`` as a DNS-1035 label: lowercase letters, digits and '-', starting with a letter."""
    s = _NOT_LABEL.sub("-", text.lower()).strip("-")
    s = re.sub(r"-{2,}", "-", s) or "x"
    if not s[0].isalpha():
        s = "i-" + s
    if len(s) > max_len:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        s = s[: max_len - 9].rstrip("-") + "-" + digest
    return s


def name_instances(d: Demands, p: Packing) -> list[str]:
    """Kept names stay; new instances get ``<type>-<n>`` with the lowest free n."""
    taken = {inst.name for inst in p.instances if inst.name}
    counters: dict[int, int] = {}
    names = []
    for inst in p.instances:
        if inst.name:
            names.append(inst.name)
            continue
        base = dns_label(d.types[inst.type].name, 40)
        k = counters.get(inst.type, 0)
        while f"{base}-{k}" in taken:
            k += 1
        counters[inst.type] = k + 1
        taken.add(f"{base}-{k}")
        names.append(f"{base}-{k}")
    return names


def to_plan(d: Demands, p: Packing, loads: list[ModelLoad], report: SolverReport, *, store: str = "",
            base_port: int = 8080, notes: list[str] | None = None) -> Plan:
    """The plan file's content for packing ``p`` of the models in ``d``."""
    order = sorted(range(len(p.instances)), key=lambda k: (p.instances[k].type, p.instances[k].name or "~", k))
    p = Packing([p.instances[k] for k in order])
    names = name_instances(d, p)
    instances, servers = [], []
    placed = placements(d, [inst.devices for inst in p.instances])
    on_device: dict[tuple[int, int], list[FamilyOnServer]] = {}
    for fp in placed:
        members = set(fp.members)
        for k, j in fp.devices:
            n_here = sum(1 for m in p.instances[k].devices[j] if m in members)
            on_device.setdefault((k, j), []).append(FamilyOnServer(key=fp.key, members=n_here,
                                                                   shared_bytes=fp.shared_bytes))
    server_of: dict[tuple[int, int], str] = {}
    for k, (inst, iname) in enumerate(zip(p.instances, names)):
        t = d.types[inst.type]
        instances.append(InstancePlan(name=iname, type=t.name, price_per_hour=t.price))
        for j, dev in enumerate(inst.devices):
            if not dev:
                continue
            idx = np.asarray(sorted(dev, key=lambda m: d.ids[m]))
            fams = on_device.get((k, j), [])
            mem_fraction, comp_fraction = load(d, inst.type, list(idx))
            server_of[(k, j)] = dns_label(f"shoal-{iname}-{j}")
            servers.append(ServerPlan(
                name=server_of[(k, j)], instance=iname, instance_type=t.name,
                processor=t.processor, device=t.device_label(j), port=base_port + j,
                models=[d.ids[m] for m in idx],
                memory_bytes=int(sum(loads[m].memory_bytes for m in idx) + sum(f.shared_bytes for f in fams)),
                memory_fraction=round(mem_fraction, 6), compute_fraction=round(comp_fraction, 6),
                device_index=j, device_memory_bytes=t.device_memory_bytes,
                threads=t.vcpu_per_device if t.processor == "cpu" else None, families=fams))
    families = [FamilyPlan(key=fp.key, members=len(fp.members), shared_bytes=fp.shared_bytes,
                           servers=[server_of[w] for w in fp.devices]) for fp in placed]
    cost = sum(i.price_per_hour for i in instances)
    routing = {m: s.name for s in servers for m in s.models}
    return Plan(created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), store=store,
                max_memory=d.max_memory, max_compute=d.max_compute, instances=instances, servers=servers,
                routing=dict(sorted(routing.items())), cost_per_hour=round(cost, 6),
                price_per_model_hour=round(cost / max(1, d.n), 8), solver=report,
                rps={x.id: x.rps for x in loads}, notes=list(notes or []), families=families)
