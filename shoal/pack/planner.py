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

from shoal.pack.demand import Demands, ModelLoad
from shoal.pack.packing import Packing
from shoal.pack.plan import InstancePlan, Plan, ServerPlan, SolverReport

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
    for inst, iname in zip(p.instances, names):
        t = d.types[inst.type]
        instances.append(InstancePlan(name=iname, type=t.name, price_per_hour=t.price))
        for j, dev in enumerate(inst.devices):
            if not dev:
                continue
            idx = np.asarray(sorted(dev, key=lambda m: d.ids[m]))
            servers.append(ServerPlan(
                name=dns_label(f"shoal-{iname}-{j}"), instance=iname, instance_type=t.name,
                processor=t.processor, device=t.device_label(j), port=base_port + j,
                models=[d.ids[m] for m in idx], memory_bytes=int(sum(loads[m].memory_bytes for m in idx)),
                memory_fraction=round(float(d.mem[idx, inst.type].sum()), 6),
                compute_fraction=round(float(d.comp[idx, inst.type].sum()), 6),
                device_index=j, device_memory_bytes=t.device_memory_bytes,
                threads=t.vcpu_per_device if t.processor == "cpu" else None))
    cost = sum(i.price_per_hour for i in instances)
    routing = {m: s.name for s in servers for m in s.models}
    return Plan(created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), store=store,
                max_memory=d.max_memory, max_compute=d.max_compute, instances=instances, servers=servers,
                routing=dict(sorted(routing.items())), cost_per_hour=round(cost, 6),
                price_per_model_hour=round(cost / max(1, d.n), 8), solver=report,
                rps={x.id: x.rps for x in loads}, notes=list(notes or []))
