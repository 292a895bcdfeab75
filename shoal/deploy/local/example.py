"""The `curl` that deploy prints: a real request to a real model of the fleet, tried once first.

Why try it: "prints a curl that works" is only true if we ran it. The request is sent
with httpx (same URL, same body), and the answer is shown beside the command.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

import httpx

from shoal.deploy.local.fleet import FleetSpec, ServerSpec
from shoal.errors import ShoalError
from shoal.store import ModelStore

_TEXT = "The delivery was late, but the support team was wonderful and fixed everything."
_QUESTION = ("Who fixed everything?", "The delivery was late, but the support team fixed everything within a day.")
_TASK_ORDER = ("classification", "embedding", "question-answering", "detection")


@dataclass
class Example:
    model_id: str
    url: str
    body: dict[str, Any] | None  # None: a GET (models we cannot make a body for here)

    @property
    def curl(self) -> str:
        if self.body is None:
            return f"curl -s {shlex.quote(self.url)}"
        return (f"curl -s -X POST {shlex.quote(self.url)} -H 'Content-Type: application/json' "
                f"-d {shlex.quote(json.dumps(self.body))}")

    def run(self, timeout_s: float = 60.0) -> tuple[int | None, str]:
        """(HTTP status, short answer); status None when the server could not be reached."""
        try:
            if self.body is None:
                resp = httpx.get(self.url, timeout=timeout_s)
            else:
                resp = httpx.post(self.url, json=self.body, timeout=timeout_s)
        except httpx.HTTPError as exc:
            return None, str(exc) or type(exc).__name__
        text = resp.text.strip().replace("\n", " ")
        return resp.status_code, text if len(text) <= 300 else text[:297] + "..."


def _task_of(store: ModelStore, model_id: str) -> str | None:
    try:
        return store.read_manifest(model_id).task
    except ShoalError:
        return None


def pick_example(fleet: FleetSpec, store: ModelStore) -> Example | None:
    """A text model if the fleet has one (classification first, as in the README), on a server serving it."""
    every = store.list_ids() if any(s.models is None for s in fleet.servers) else []
    candidates: list[tuple[str, ServerSpec]] = []
    for server in fleet.servers:
        for m in (server.models if server.models is not None else every)[:50]:
            candidates.append((m, server))
    tasks = {m: _task_of(store, m) for m, _ in candidates}
    rank = {t: i for i, t in enumerate(_TASK_ORDER)}
    candidates.sort(key=lambda c: rank.get(tasks[c[0]] or "", 99))  # stable: first server wins ties
    if not candidates:
        return None
    model_id, server = candidates[0]
    task = tasks[model_id]
    if task in ("classification", "embedding"):
        return Example(model_id, f"{server.url}/predictions/{model_id}", {"text": _TEXT})
    if task == "question-answering":
        return Example(model_id, f"{server.url}/predictions/{model_id}",
                       {"question": _QUESTION[0], "context": _QUESTION[1]})
    return Example(model_id, f"{server.url}/v2/models/{model_id}", None)
