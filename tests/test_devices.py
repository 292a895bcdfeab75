"""shoal/devices.py is the one vocabulary of processors and cores.

``usable_cores`` must honour the affinity mask (taskset, a CPU slice) and a cgroup CPU
quota (a Kubernetes limit), and everything that sizes threads (executor, local fleet,
``cpu_slices``) must use it rather than ``os.cpu_count``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from shoal import devices
from shoal.devices import PROCESSORS, Device, cgroup_cpu_quota, usable_cores

ROOT = Path(__file__).resolve().parents[1]


def test_cgroup_quota_is_read_and_rounded_up(tmp_path: Path) -> None:
    f = tmp_path / "cpu.max"
    f.write_text("150000 100000\n")
    assert cgroup_cpu_quota(str(f)) == 2
    f.write_text("max 100000\n")
    assert cgroup_cpu_quota(str(f)) is None
    assert cgroup_cpu_quota(str(tmp_path / "missing")) is None
    f.write_text("50000 100000\n")
    assert usable_cores(str(f)) == 1, "a half-CPU quota leaves one core, whatever the affinity mask says"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux affinity")
def test_usable_cores_follows_the_affinity_mask() -> None:
    """A child pinned to one core counts one, though the machine has more."""
    one = sorted(os.sched_getaffinity(0))[0]
    code = ("import os; os.sched_setaffinity(0, {%d}); from shoal.devices import usable_cores; "
            "from shoal.server.executor import device_cores; from shoal.devices import Device, cpu_slices, "
            "process_env; print(usable_cores(), device_cores(Device('cpu')), len(cpu_slices(1)), "
            "process_env(Device('cpu'))['OMP_NUM_THREADS'])" % one)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    assert out == ["1", "1", "1", "1"]


def test_executor_and_fleet_count_cores_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.deploy.local import fleet
    from shoal.server import executor

    monkeypatch.setattr(devices, "usable_cores", lambda *a: 3)
    monkeypatch.setattr(executor, "usable_cores", lambda *a: 3)
    monkeypatch.setattr(fleet, "usable_cores", lambda *a: 3)
    assert executor.device_cores(Device("cpu")) == 3
    assert executor.executor_layout(Device("cpu"), None, None) == (3, 1)
    assert len(devices.cpu_slices(3)) == 3
    with pytest.raises(Exception, match="3 cores"):
        devices.cpu_slices(4)


def test_no_module_counts_the_machine_for_sizing() -> None:
    """os.cpu_count only where the machine itself is described (reports, measured_on), never to size threads."""
    allowed = {"shoal/devices.py", "shoal/loadtest/command.py", "shoal/trace/stage.py", "shoal/trace/detector.py"}
    users = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "shoal").rglob("*.py")
                   if "cpu_count" in p.read_text() and str(p.relative_to(ROOT)) not in allowed)
    assert users == [], f"count cores with shoal.devices.usable_cores, not os.cpu_count: {users}"


def _literal_tuples(path: Path) -> list[tuple[str, ...]]:
    """Every tuple or Literal[...] of string constants in ``path`` that names all four processors."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        elts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else None
        if elts and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elts):
            values = tuple(e.value for e in elts)  # type: ignore[attr-defined]
            if set(PROCESSORS) <= set(values):
                found.append(values)
    return found


def test_processor_names_are_defined_once() -> None:
    """The names live in shoal/devices.py; the manifest and the instance catalog import its Literal."""
    from shoal.devices import Processor
    from shoal.pack.catalog import Processor as CatalogProcessor
    from shoal.store.manifest import Processor as ManifestProcessor

    assert PROCESSORS == ("cpu", "gpu", "inf1", "inf2") == get_args(Processor)
    assert CatalogProcessor is Processor and ManifestProcessor is Processor
    spelled = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "shoal").rglob("*.py")
                     if str(p.relative_to(ROOT)) != "shoal/devices.py" and _literal_tuples(p))
    assert spelled == [], f"import PROCESSORS from shoal.devices instead of spelling them out: {spelled}"
