"""plan.json: the output of ``shoal pack`` and the input of deploy and loadtest."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from shoal.errors import UsageError


class InstancePlan(BaseModel):
    name: str = Field(description="unique instance name, e.g. inf1-6xlarge-0")
    type: str = Field(description="catalog instance type, e.g. inf1.6xlarge")
    price_per_hour: float


class FamilyOnServer(BaseModel):
    """A family with members on one server: its shared bytes are held there once."""

    key: str = Field(description="family key (shoal/family/keys.py)")
    members: int = Field(description="members of the family on this server")
    shared_bytes: int = Field(description="bytes the members share, counted once in the server's memory_bytes")


class FamilyPlan(BaseModel):
    """A family across the plan: split over several servers, it pays its shared bytes on each."""

    key: str
    members: int
    shared_bytes: int
    servers: list[str]


class ServerPlan(BaseModel):
    """One server process = one device slot on one instance."""

    name: str = Field(description="DNS-safe server name, unique in the plan, e.g. shoal-3")
    instance: str = Field(description="InstancePlan.name this server runs on")
    instance_type: str
    processor: str = Field(description="cpu | gpu | inf1 | inf2")
    device: str = Field(description="cpu | cuda:N | neuron:A-B")
    port: int = 8080
    models: list[str]
    memory_bytes: int = 0
    memory_fraction: float = 0.0
    compute_fraction: float = 0.0
    device_index: int = Field(0, description="device slot on its instance (port = base port + this)")
    device_memory_bytes: int = Field(0, description="memory of the device; the server's budget is a share of it")
    threads: int | None = Field(None, description="vCPUs of the slice for cpu servers")
    families: list[FamilyOnServer] = Field(default_factory=list, description="families with members here; "
                                           "memory_bytes counts each one's shared bytes once")


class SolverReport(BaseModel):
    method: str
    seconds: float
    cost_per_hour: float
    lower_bound: float
    gap: float = Field(description="(cost - lower_bound) / lower_bound")
    moved_models: int | None = None
    optimal: bool = False
    fresh_cost_per_hour: float | None = Field(None, description="re-plan only: cost of planning from scratch")


class Plan(BaseModel):
    version: int = 1
    created_at: str = ""
    store: str = ""
    max_memory: float = 0.9
    max_compute: float = 0.83
    instances: list[InstancePlan] = Field(default_factory=list)
    servers: list[ServerPlan] = Field(default_factory=list)
    routing: dict[str, str] = Field(default_factory=dict, description="model id -> server name")
    cost_per_hour: float = 0.0
    price_per_model_hour: float = 0.0
    solver: SolverReport | None = None
    rps: dict[str, float] = Field(default_factory=dict, description="model id -> requests/s the plan was sized for")
    notes: list[str] = Field(default_factory=list, description="assumptions a reader should know (estimates)")
    families: list[FamilyPlan] = Field(default_factory=list, description="families of two or more packed models")

    def server(self, name: str) -> ServerPlan:
        for s in self.servers:
            if s.name == name:
                return s
        raise UsageError(f"plan has no server named {name!r}; servers: {', '.join(s.name for s in self.servers)}")

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)


def load_plan(path: Path | str) -> Plan:
    """Read and validate a plan file, with one clear error line on failure."""
    p = Path(path)
    try:
        return Plan.model_validate(json.loads(p.read_text()))
    except FileNotFoundError:
        raise UsageError(f"plan file {p} does not exist: run `shoal pack -o {p}` first") from None
    except (json.JSONDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()[0:3]
        raise UsageError(f"plan file {p} is not a valid plan: {' '.join(first)}") from None
