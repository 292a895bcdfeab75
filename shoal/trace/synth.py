"""Synthesise N unique models from a traced base: seeded small perturbations plus a fresh head.

Only vectors (biases, LayerNorm) are perturbed, plus the head's fresh weights: that
keeps each copy within a hair of the base's behaviour and costs milliseconds, not
seconds, per model.

This stands in for a fleet of customers' fine-tuned models: every copy has distinct
weights and a distinct sha256, and inherits the base's measured profile (same
architecture, same shapes, so the same cost).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from shoal.errors import UsageError
from shoal.ids import check_model_id
from shoal.store.base import ModelStore
from shoal.store.manifest import Manifest, describe_files

HEAD_MARKERS = ("classifier", "qa_outputs", "pooler")
PERTURBATION = 1e-3  # relative to each tensor's standard deviation: outputs differ, behaviour stays the base's


def unfrozen_artifact(build_dir: Path, base: Manifest) -> Path:
    path = build_dir / base.id / f"{base.processor}-{base.precision}" / "traced.pt"
    if not path.is_file():
        raise UsageError(f"synth needs the traced (unfrozen) {base.id} from this machine's build cache: "
                         f"run `shoal trace models/{base.id}.yaml --force` first")
    return path


def synth_models(store: ModelStore, base_id: str, count: int, *, seed: int = 0, prefix: str | None = None,
                 build_dir: Path = Path(".shoal/build"), progress: Callable[[int], None] = lambda i: None) -> list[str]:
    """Create ``count`` unique models named ``<prefix>-<seed+i>`` (zero-padded); returns their ids."""
    if count < 1:
        raise UsageError("--count must be at least 1")
    base = store.read_manifest(base_id)
    if base.base is not None:
        raise UsageError(f"{base_id} is itself synthetic (from {base.base}); synthesise from a traced model")
    module = torch.jit.load(str(unfrozen_artifact(build_dir, base)), map_location="cpu").eval()
    originals = {name: p.detach().clone() for name, p in module.named_parameters()}
    base_folder = store.fetch(base_id)
    width = max(4, len(str(seed + count - 1)))
    ids = [check_model_id(f"{prefix or base_id}-{seed + i:0{width}d}") for i in range(count)]
    staging = Path(tempfile.mkdtemp(prefix="shoal-synth-"))
    try:
        for name in base.files:  # everything but the weights (tokenizer.json; nothing for detectors)
            if name != base.artifact:
                shutil.copyfile(base_folder / name, staging / name)
        for i, model_id in enumerate(ids):
            _perturb(module, originals, seed + i)
            frozen = torch.jit.freeze(module)
            torch.jit.save(frozen, str(staging / "model.pt"))
            manifest = base.model_copy(update={
                "id": model_id, "base": base_id, "files": describe_files(staging, list(base.files)),
                "spec_sha256": f"synth:{base.spec_sha256}:{seed + i}",
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            })
            store.push(staging, manifest)
            (staging / "model.pt").unlink()
            progress(i + 1)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ids


@torch.no_grad()
def _perturb(module: torch.jit.ScriptModule, originals: dict[str, torch.Tensor], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        base = originals[name]
        if any(marker in name for marker in HEAD_MARKERS) and name.endswith("weight"):
            fresh = torch.randn(base.shape, generator=generator) * 0.02  # a newly initialised head
            param.copy_(fresh.to(base.dtype))
            continue
        if base.dim() != 1:
            continue  # matrices keep the base's values: perturbing the vectors already makes every model unique
        scale = base.float().std().item() if base.numel() > 1 else 0.0
        noise = torch.randn(base.shape, generator=generator) * (PERTURBATION * max(scale, 1e-3))
        param.copy_((base.float() + noise).to(base.dtype))
