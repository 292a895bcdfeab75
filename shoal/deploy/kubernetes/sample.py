"""Synthetic plans of a given fleet and size, for tests, docs and the rendering benchmark.

Why: the deploy renderers must be exercised on CPU, time-sliced GPU and Inferentia
fleets of up to thousands of models on a machine that has none of them, and the
benchmark figure must be reproducible with one command (`shoal deploy sample-plan`).
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.devices import NEURON_PROCESSORS
from shoal.errors import UsageError
from shoal.pack.catalog import load_catalog, resolve
from shoal.pack.plan_file import InstancePlan, Plan, ServerPlan

MODEL_BYTES = 60 * (1 << 20)


@dataclass(frozen=True)
class _Fleet:
    instance_type: str
    processor: str
    slots: int  # servers per instance
    models_per_server: int

    def device(self, slot: int) -> str:
        if self.processor == "gpu":
            return "cuda:0"  # time-sliced: every server of the instance shares GPU 0
        if self.processor in NEURON_PROCESSORS:
            return f"neuron:{slot}-{slot}"
        return "cpu"


FLEETS = {
    "cpu": _Fleet("c5.2xlarge", "cpu", 4, 10),
    "gpu": _Fleet("g4dn.xlarge", "gpu", 8, 10),
    "inf1": _Fleet("inf1.6xlarge", "inf1", 16, 20),
    "inf2": _Fleet("inf2.xlarge", "inf2", 2, 50),
}


def sample_plan(fleet: str, models: int, models_per_server: int | None = None,
                store: str = "s3://shoal-models/store") -> Plan:
    """A plan spreading ``models`` synthetic ids over servers of one ``fleet`` kind."""
    if fleet not in FLEETS:
        raise UsageError(f"unknown fleet {fleet!r}: use one of {', '.join(FLEETS)}")
    if models < 1:
        raise UsageError("--models must be at least 1")
    spec = FLEETS[fleet]
    per = models_per_server or spec.models_per_server
    if per < 1:
        raise UsageError("--models-per-server must be at least 1")
    price = resolve(load_catalog(), spec.instance_type).price
    ids = [f"model-{i:05d}" for i in range(models)]
    chunks = [ids[i:i + per] for i in range(0, models, per)]
    instances: list[InstancePlan] = []
    servers: list[ServerPlan] = []
    for n, chunk in enumerate(chunks):
        slot = n % spec.slots
        if slot == 0:
            family = spec.instance_type.replace(".", "-")
            instances.append(InstancePlan(name=f"{family}-{len(instances)}", type=spec.instance_type,
                                          price_per_hour=price))
        servers.append(ServerPlan(
            name=f"shoal-{n}", instance=instances[-1].name, instance_type=spec.instance_type,
            processor=spec.processor, device=spec.device(slot), port=8080 + n, models=chunk,
            memory_bytes=MODEL_BYTES * len(chunk), memory_fraction=0.5,
            compute_fraction=round(0.8 / spec.slots, 4) if spec.processor == "gpu" else 0.5))
    cost = sum(i.price_per_hour for i in instances)
    return Plan(created_at="sample", store=store, instances=instances, servers=servers,
                routing={m: s.name for s in servers for m in s.models}, cost_per_hour=round(cost, 4),
                price_per_model_hour=round(cost / models, 6))
