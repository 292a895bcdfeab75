"""Synthesise N unique models from a traced base: seeded perturbations plus a fresh head.

This stands in for a fleet of customers' fine-tuned models: every copy has distinct
weights and a distinct sha256, and inherits the base's measured profile (same
architecture, same shapes, so the same cost).

By default only vectors (biases, LayerNorm) are perturbed, plus the head's fresh weights:
each copy stays within a hair of the base's behaviour and shares the base's large matrices
(what a partial fine-tune looks like). ``distinct=True`` perturbs every tensor, so no
sharing of any kind can make a long-tail test easy.

A base traced as a shared graph (``weights`` in its manifest) is copied by writing a file of the
member's own tensors beside references to the base's graph and weights (shoal/family/shared_base.py):
no TorchScript work and no copy of the base per member. A base with a frozen
artifact (detectors) is re-frozen per copy from the unfrozen trace kept in the build cache.
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
DISTINCT_PERTURBATION = 2e-2  # --distinct: large enough to change most elements even in bf16


def unfrozen_artifact(build_dir: Path, base: Manifest) -> Path:
    path = build_dir / base.id / f"{base.processor}-{base.precision}" / "traced.pt"
    if not path.is_file():
        raise UsageError(f"synth needs the traced (unfrozen) {base.id} from this machine's build cache: "
                         f"run `shoal trace models/{base.id}.yaml --force` first")
    return path


def synth_models(store: ModelStore, base_id: str, count: int, *, seed: int = 0, prefix: str | None = None,
                 build_dir: Path = Path(".shoal/build"), distinct: bool = False,
                 progress: Callable[[int], None] = lambda i: None) -> list[str]:
    """Create ``count`` unique models named ``<prefix>-<seed+i>`` (zero-padded); returns their ids."""
    if count < 1:
        raise UsageError("--count must be at least 1")
    base = store.read_manifest(base_id)
    if base.base is not None:
        raise UsageError(f"{base_id} is itself synthetic (from {base.base}); synthesise from a traced model")
    width = max(4, len(str(seed + count - 1)))
    ids = [check_model_id(f"{prefix or base_id}-{seed + i:0{width}d}") for i in range(count)]
    if base.weights:
        return _synth_weights(store, base, ids, seed, distinct, progress)
    if distinct:
        raise UsageError(f"--distinct needs a base traced as a shared graph; {base_id} is a frozen "
                         f"{base.kind} artifact")
    module = torch.jit.load(str(unfrozen_artifact(build_dir, base)), map_location="cpu").eval()
    originals = {name: p.detach().clone() for name, p in module.named_parameters()}
    base_folder = store.fetch(base_id)
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


def _synth_weights(store: ModelStore, base: Manifest, ids: list[str], seed: int, distinct: bool,
                   progress: Callable[[int], None]) -> list[str]:
    """Members of a shared-graph base: each writes only the tensors it changed; the base's graph, tokenizer
    and weights (as a shared shard) are referenced, not copied (shoal/family/shared_base.py)."""
    from safetensors.torch import load_file

    from shoal.family.shared_base import SharedBase

    assert base.weights is not None
    with SharedBase(store, base) as shared:
        originals = load_file(str(shared.staging / shared.shard))
        if base.tensors:  # the base's tensors by their graph names, wherever its manifest keeps them
            originals = {n: originals[t.key or n] for n, t in base.tensors.items() if t.file == base.weights}
        plan = None if distinct else _Vectors(originals)
        for i, model_id in enumerate(ids):
            own = plan.perturbed(seed + i) if plan else _perturbed(originals, seed + i, distinct)
            shared.push(model_id, own, {
                "spec_sha256": f"synth:{base.spec_sha256}:{seed + i}:{'distinct' if distinct else 'partial'}"})
            progress(i + 1)
    return ids


class _Noise:
    """Gaussian noise for many copies, cheaply: one bank drawn once, a random window of it per tensor.

    Drawing fresh normals for 22 M parameters per copy dominated synthesis (~0.4 s a copy); a
    random offset into a 16 M-value bank gives every tensor of every copy its own noise for the
    price of an add. ``distinct`` copies use a larger step so that most elements change even in
    bf16 (whose spacing is ~0.4 % of a value), not only a few per page.
    """

    BANK = 1 << 24

    def __init__(self) -> None:
        self.bank = torch.randn(self.BANK, generator=torch.Generator().manual_seed(20261204))
        self.scales: dict[str, float] = {}

    def window(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if n > self.BANK:
            reps = -(-n // self.BANK)
            return self.bank.roll(int(torch.randint(self.BANK, (1,), generator=generator))).repeat(reps)[:n]
        start = int(torch.randint(self.BANK - n + 1, (1,), generator=generator))
        return self.bank[start:start + n]

    def perturb(self, name: str, base: torch.Tensor, generator: torch.Generator, step: float) -> torch.Tensor:
        if name not in self.scales:
            self.scales[name] = base.float().std().item() if base.numel() > 1 else 0.0
        noise = self.window(base.numel(), generator).view(base.shape) * (step * max(self.scales[name], 1e-3))
        noisy = base.float() + noise
        if not base.is_floating_point():  # int8 weights (shoal/trace/quantize.py): round, stay in range
            info = torch.iinfo(base.dtype)
            noisy = noisy.round().clamp(info.min, info.max)
        return noisy.to(base.dtype).contiguous()


_NOISE: list[_Noise] = []


def _noise() -> _Noise:
    if not _NOISE:
        _NOISE.append(_Noise())
    return _NOISE[0]


class _Vectors:
    """What a partial copy changes, prepared once per synth run: a fresh head, and the base's float vectors
    perturbed as one flat buffer with a per-element scale. A copy then costs one add and one cast per
    dtype instead of ~60 small tensor operations (the difference between ~30 ms and a few ms a copy)."""

    def __init__(self, originals: dict[str, torch.Tensor]) -> None:
        self.heads = {n: t for n, t in originals.items() if any(m in n for m in HEAD_MARKERS) and n.endswith("weight")}
        vectors = {n: t for n, t in originals.items() if n not in self.heads and t.dim() == 1}
        self.other = {n: t for n, t in vectors.items() if not t.is_floating_point()}  # per tensor, as before
        self.groups: list[tuple[torch.dtype, list[tuple[str, int, int]], torch.Tensor, torch.Tensor]] = []
        for dtype in sorted({t.dtype for n, t in vectors.items() if n not in self.other}, key=str):
            names = [(n, t) for n, t in vectors.items() if t.dtype == dtype and n not in self.other]
            flat = torch.cat([t.float() for _, t in names])
            scale = torch.cat([torch.full((t.numel(),), PERTURBATION * max(
                t.float().std().item() if t.numel() > 1 else 0.0, 1e-3)) for _, t in names])
            spans, start = [], 0
            for n, t in names:
                spans.append((n, start, t.numel()))
                start += t.numel()
            self.groups.append((dtype, spans, flat, scale))

    @torch.no_grad()
    def perturbed(self, seed: int) -> dict[str, torch.Tensor]:
        noise = _noise()
        generator = torch.Generator().manual_seed(seed)
        out = {n: (torch.randn(t.shape, generator=generator) * 0.02).to(t.dtype) for n, t in self.heads.items()}
        for dtype, spans, flat, scale in self.groups:
            noisy = (flat + noise.window(flat.numel(), generator) * scale).to(dtype)
            out.update({n: noisy[start:start + size] for n, start, size in spans})
        for name, base in self.other.items():
            out[name] = noise.perturb(name, base, generator, PERTURBATION)
        return out


@torch.no_grad()
def _perturbed(originals: dict[str, torch.Tensor], seed: int, distinct: bool) -> dict[str, torch.Tensor]:
    noise = _noise()
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, base in originals.items():
        if any(marker in name for marker in HEAD_MARKERS) and name.endswith("weight"):
            out[name] = (torch.randn(base.shape, generator=generator) * 0.02).to(base.dtype)  # a fresh head
        elif base.dim() == 1 or distinct:
            out[name] = noise.perturb(name, base, generator, DISTINCT_PERTURBATION if distinct else PERTURBATION)
        # else: the base's own tensor, shared through its shard (a partial fine-tune)
    return out


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
