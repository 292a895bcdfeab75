"""A job: its states, its record (one flat mapping, the same in SQLite rows and Redis hashes), its public view.

States only move forward: queued -> running -> succeeded | failed, queued -> cancelled,
and running -> queued again when a delivery is retried or its worker vanished.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def new_job_id() -> str:
    return uuid.uuid4().hex


def is_job_id(text: str) -> bool:
    return bool(_JOB_ID.match(text))


@dataclass
class JobRecord:
    """Everything known about one job. ``input_location`` is ours to delete when ``inline``."""

    id: str
    model_id: str
    input_location: str
    output_location: str
    failure_location: str
    state: JobState = JobState.QUEUED
    inline: bool = True
    input_bytes: int = 0
    content_type: str = "application/json"  # or image/* / application/octet-stream: raw bytes for detectors
    media_params: str = ""  # JSON object of query options that go with a raw image (conf, iou, ...)
    created_at: float = field(default_factory=time.time)
    expires_at: float = 0.0
    timeout_s: float = 900.0
    max_attempts: int = 3
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    dead_letter: bool = False
    notify_success: list[str] = field(default_factory=list)
    notify_failure: list[str] = field(default_factory=list)

    def targets(self) -> list[str]:
        """Webhook URLs for the state this job ended in."""
        if self.state is JobState.SUCCEEDED:
            return self.notify_success
        if self.state is JobState.FAILED:
            return self.notify_failure
        return []

    # -- one flat mapping of strings, for SQLite rows and Redis hashes (on every state change: kept cheap) --
    def to_flat(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, kind in _KINDS.items():
            v = getattr(self, name)
            if v is None:
                continue
            if kind == "list":
                out[name] = json.dumps(v)
            elif kind == "bool":
                out[name] = "1" if v else "0"
            elif kind == "state":
                out[name] = v.value
            else:
                out[name] = v if kind == "str" else repr(v)
        return out

    @classmethod
    def from_flat(cls, data: dict[str, Any]) -> "JobRecord":
        values: dict[str, Any] = {}
        for name, kind in _KINDS.items():
            raw = data.get(name)
            if raw is None:
                continue
            if isinstance(raw, bytes):
                raw = raw.decode()
            if kind == "str":
                values[name] = raw
            elif kind == "float":
                values[name] = float(raw)
            elif kind == "int":
                values[name] = int(raw)
            elif kind == "bool":
                values[name] = raw in ("1", 1, True, "true")
            elif kind == "state":
                values[name] = JobState(raw)
            else:
                values[name] = json.loads(raw) if isinstance(raw, str) else list(raw)
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """What ``GET /async/jobs/{id}`` answers (and webhooks carry)."""
        out: dict[str, Any] = {
            "job_id": self.id, "model_id": self.model_id, "state": self.state.value,
            "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
            "attempts": self.attempts, "input_location": self.input_location,
        }
        if self.state is JobState.SUCCEEDED or not self.state.terminal:
            out["output_location"] = self.output_location
        if self.state is JobState.FAILED:
            out["failure_location"] = self.failure_location
            out["error"] = self.error
            out["dead_letter"] = self.dead_letter
        elif self.error:
            out["last_error"] = self.error
        return out


def _kind(annotation: str) -> str:
    base = annotation.replace(" | None", "")
    return {"JobState": "state", "list[str]": "list"}.get(base, base)


_KINDS: dict[str, str] = {f.name: _kind(str(f.type)) for f in fields(JobRecord)}
