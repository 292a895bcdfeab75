"""A 3,000-model plan renders completely and stays within the API server's object limits.

Timing is measured in docs/BENCHMARKS.md (## deploy), not asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest

from shoal.deploy.kubernetes.manifests import render
from shoal.deploy.kubernetes.options import KubeOptions
from shoal.deploy.kubernetes.output import write_tree
from shoal.deploy.kubernetes.routing import CONFIGMAP_LIMIT
from shoal.deploy.kubernetes.sample import sample_plan

MODELS = 3000


@pytest.mark.parametrize("fleet", ["inf1", "gpu"])
def test_three_thousand_models(fleet: str, tmp_path: Path) -> None:
    plan = sample_plan(fleet, MODELS)
    rendered = render(plan, KubeOptions(store="s3://models/store", ingress=True, gpu_slices=8))
    docs = rendered.documents()
    servers = len(plan.servers)
    assert servers == MODELS // (20 if fleet == "inf1" else 10)
    assert sum(d["kind"] == "Deployment" for d in docs) == servers

    routing = next(d for d in docs if d["metadata"]["name"] == "shoal-routing")
    table = json.loads(routing["data"]["routing.json"])
    assert len(table) == MODELS
    assert sum(len(v) for v in routing["data"].values()) < CONFIGMAP_LIMIT
    ingress_paths = [p["path"] for d in docs if d["kind"] == "Ingress" for p in d["spec"]["rules"][0]["http"]["paths"]]
    assert len(ingress_paths) == len(set(ingress_paths)) == 2 * MODELS

    # Every object kind, at both ends of the plan, validated strictly (all of them takes ~40 s).
    names = {"shoal-0", f"shoal-{servers - 1}"}
    sample = [d for d in docs if d["metadata"].get("namespace") != "shoal"
              or d["metadata"]["name"].removesuffix("-plan") in names or d["kind"] in ("Namespace", "ServiceAccount")
              or d["metadata"]["name"] == "shoal-routing"]
    assert len({d["kind"] for d in sample}) >= 9
    for doc in sample:
        kubernetes_validate.validate(doc, "1.33.0", strict=True)

    texts = rendered.texts()
    write_tree(tmp_path / "k8s", texts, {})
    written = sorted(p.relative_to(tmp_path / "k8s").as_posix() for p in (tmp_path / "k8s").rglob("*")
                     if p.is_file() and not p.name.startswith("."))
    assert written == sorted(texts)
