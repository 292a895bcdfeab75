"""Load scenarios: YAML files under ``loadtest/`` that name a run's shape.

Why files: the runs we quote in docs/BENCHMARKS.md must be repeatable by name
(``shoal loadtest --scenario loadtest/burst.yaml``); flags given on the command
line override a scenario's values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shoal.errors import UsageError
from shoal.yaml_models import load_yaml_model

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|min|h)?\s*$")


def parse_duration(text: str | float | int, what: str = "duration") -> float:
    """'60s', '2m', '500ms', '1.5h' or a number of seconds -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise UsageError(f"cannot read {what} {text!r}: use e.g. 60s, 2m, 500ms")
        value = float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    if value < 0:
        raise UsageError(f"{what} must not be negative")
    return value


def parse_rate(text: str | float | int, capacity: float | None) -> float:
    """'150%' of capacity, or an absolute requests/s."""
    s = str(text).strip()
    if s.endswith("%"):
        if capacity is None:
            raise UsageError(f"rate {s} is relative: the scenario needs a capacity (or pass --capacity)")
        try:
            return float(s[:-1]) / 100.0 * capacity
        except ValueError:
            raise UsageError(f"cannot read rate {s!r}") from None
    try:
        value = float(s)
    except ValueError:
        raise UsageError(f"cannot read rate {s!r}: use requests/s or a percentage of capacity") from None
    if value <= 0:
        raise UsageError(f"rate {s!r} must be positive")
    return value


Duration = Union[str, float]


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate: Union[str, float] = Field(description="requests/s or 'N%' of capacity")
    duration: Duration
    max_error_rate: float | None = Field(None, ge=0, le=1, description="this stage's limit (default: the run's)")


class CapacityProbe(BaseModel):
    """How ``capacity: measure`` finds the server's capacity: a short closed-loop run."""

    model_config = ConfigDict(extra="forbid")

    clients: int = Field(40, ge=1)
    duration: Duration = "10s"


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    description: str = ""
    clients: int | None = Field(None, ge=1)
    rate: float | None = Field(None, gt=0)
    duration: Duration | None = None
    requests: int | None = Field(None, ge=1)
    warmup: Duration | None = None
    models: str | None = None
    payload: str | None = None
    timeout: Duration | None = None
    max_error_rate: float | None = Field(None, ge=0, le=1)
    workers: int | None = Field(None, ge=1)
    expect_models: int | None = Field(None, ge=1, description="warn when the target offers fewer models")
    capacity: Union[Literal["measure"], float, None] = None
    capacity_probe: CapacityProbe = Field(default_factory=CapacityProbe)
    stages: list[StageSpec] = Field(default_factory=list)

    @field_validator("models")
    @classmethod
    def _models(cls, v: str | None) -> str | None:
        if v is not None and v not in ("random", "sequential") and not v.startswith("zipf"):
            raise ValueError("must be random, sequential or zipf:S")
        return v


def load_scenario(path: Path | str) -> Scenario:
    """Read and validate a scenario file with one clear error line."""
    p = Path(path)
    sc = load_yaml_model(p, Scenario, what="scenario file", shape="of setting: value",
                         missing_hint=" (see loadtest/*.yaml)")
    for field in ("duration", "warmup", "timeout"):
        value = getattr(sc, field)
        if value is not None:
            parse_duration(value, f"{field} in {p}")
    for i, st in enumerate(sc.stages):
        parse_duration(st.duration, f"stages[{i}].duration in {p}")
        if not str(st.rate).strip().endswith("%"):
            parse_rate(st.rate, None)
    if sc.stages and (sc.clients is not None or sc.rate is not None):
        raise UsageError(f"scenario file {p}: 'stages' is an open-loop schedule; drop 'clients' and 'rate'")
    return sc
