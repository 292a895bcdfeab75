"""The instance catalog: what each candidate instance type offers and costs.

The catalog is data (``catalog.yaml`` in this package, or the user's own file); this
module validates it and resolves the names given to ``--instances`` into
:class:`InstanceType` records the solver works with, including the pseudo type
``local`` that describes this machine: its vCPUs are the cores this process may use
(``shoal.devices.usable_cores``: affinity and cgroup quota), its RAM the machine's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shoal.devices import Processor, usable_cores
from shoal.errors import UsageError
from shoal.yaml_models import load_yaml_model

GIB = 1 << 30


class AcceleratorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    processor: Processor
    memory_gib: float | None = Field(None, gt=0, description="per device; cpu: host RAM / devices")
    speed: float = Field(gt=0, description="x one executor of the profiling CPU (cpu: per vCPU)")


class InstanceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accelerator: str
    devices: int = Field(ge=1)
    vcpu: int | Literal["auto"] = Field(description="'auto': the cores usable here")
    ram_gib: float | Literal["auto"]
    price_per_hour: float = Field(ge=0)
    max_count: int | None = Field(None, ge=1, description="how many of this type exist (local: 1)")


class CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    region: str = ""
    prices_source: str = ""
    prices_recorded: str = ""
    accelerators: dict[str, AcceleratorSpec]
    instance_types: dict[str, InstanceSpec]


@dataclass(frozen=True)
class InstanceType:
    """One resolved candidate type; every device of it is a bin for the solver."""

    name: str
    processor: str
    accelerator: str
    devices: int
    vcpu: int
    ram_bytes: int
    device_memory_bytes: int
    price: float
    speed: float
    max_count: int | None = None
    machine: bool = False  # describes this machine (``local``): servers share it unpinned

    @property
    def vcpu_per_device(self) -> int:
        return max(1, self.vcpu // self.devices)

    def device_label(self, index: int) -> str:
        """The ``device`` string a server process is started with (see shoal.devices)."""
        if self.processor == "gpu":
            return f"cuda:{index}"
        if self.processor in ("inf1", "inf2"):
            return f"neuron:{index}-{index}"
        if self.machine or self.devices == 1:
            return "cpu"
        first = index * self.vcpu_per_device
        return f"cpu:{first}-{first + self.vcpu_per_device - 1}"


def default_catalog_path() -> Path:
    return Path(str(files("shoal.pack") / "catalog.yaml"))


def load_catalog(path: Path | str | None = None) -> CatalogFile:
    """Read and validate a catalog file; one clear line if it is malformed."""
    p = Path(path) if path else default_catalog_path()
    catalog = load_yaml_model(p, CatalogFile, what="catalog file", shape="with 'accelerators' and 'instance_types'")
    for name, spec in catalog.instance_types.items():
        if spec.accelerator not in catalog.accelerators:
            raise UsageError(f"catalog file {p}: instance type {name} names unknown accelerator {spec.accelerator!r}")
        acc = catalog.accelerators[spec.accelerator]
        if acc.processor != "cpu" and acc.memory_gib is None:
            raise UsageError(f"catalog file {p}: accelerator {spec.accelerator} needs memory_gib")
    return catalog


def machine_ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resolve(catalog: CatalogFile, name: str, devices: int | None = None) -> InstanceType:
    """One catalog entry as an InstanceType; ``devices`` overrides the device count."""
    spec = catalog.instance_types.get(name)
    if spec is None:
        known = ", ".join(sorted(catalog.instance_types))
        raise UsageError(f"unknown instance type {name!r}; known types: {known}")
    acc = catalog.accelerators[spec.accelerator]
    n_dev = devices or spec.devices
    vcpu = usable_cores() if spec.vcpu == "auto" else spec.vcpu
    ram = machine_ram_bytes() if spec.ram_gib == "auto" else int(spec.ram_gib * GIB)
    dev_mem = int(acc.memory_gib * GIB) if acc.memory_gib else ram // n_dev
    return InstanceType(name=name, processor=acc.processor, accelerator=spec.accelerator, devices=n_dev,
                        vcpu=vcpu, ram_bytes=ram, device_memory_bytes=dev_mem, price=spec.price_per_hour,
                        speed=acc.speed, max_count=spec.max_count, machine=_is_machine(spec))


def _is_machine(spec: InstanceSpec) -> bool:
    """A type that describes this machine (``local``): ``--servers`` applies to it."""
    return spec.vcpu == "auto" or spec.ram_gib == "auto"


def resolve_many(catalog: CatalogFile, names: list[str], servers: int | None = None) -> list[InstanceType]:
    """``--instances a,b,c`` -> InstanceTypes; ``--servers`` sets the device count of ``local``."""
    clean = [n.strip() for n in names if n.strip()]
    if not clean:
        raise UsageError("--instances is empty: name at least one type, e.g. --instances inf1.6xlarge,g4dn.xlarge")
    if len(set(clean)) != len(clean):
        raise UsageError(f"--instances names a type twice: {','.join(clean)}")
    if servers is not None:
        if servers < 1:
            raise UsageError("--servers must be at least 1")
        if not any(n in catalog.instance_types and _is_machine(catalog.instance_types[n]) for n in clean):
            raise UsageError("--servers sets the server count of the 'local' type: add --instances local")
    out = []
    for n in clean:
        spec = catalog.instance_types.get(n)
        override = servers if (servers is not None and spec is not None and _is_machine(spec)) else None
        out.append(resolve(catalog, n, override))
    return out
