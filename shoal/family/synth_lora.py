"""Synthesise LoRA adapters over a stored base: members that share every base tensor and add rank-r factors.

Stands in for a fleet of customers' PEFT adapters (benchmarks and tests; a real adapter comes in
through a catalog entry, shoal/trace/adapters.py). Each member's files are the base's files,
the base's weights under ``shards/<sha>.safetensors`` (the same bytes, so a content-addressed
store keeps one copy) and its own ``weights.safetensors`` of LoRA factors, written the way every
synthesized member is (shoal/family/shared_base.py).
"""

from __future__ import annotations

from typing import Callable

import torch

from shoal.errors import UsageError
from shoal.family.graph import DEFAULT_SLOTS
from shoal.ids import check_model_id
from shoal.family.shared_base import SharedBase
from shoal.store.base import ModelStore
from shoal.store.manifest import Adapter, Manifest

QUERY_VALUE = ("attention.self.query", "attention.self.value")  # PEFT's default targets for BERT


def lora_targets(base: Manifest, suffixes: tuple[str, ...] = QUERY_VALUE) -> list[str]:
    """Module names of ``base`` ending with ``suffixes`` (its Linear layers, by their weight tensors)."""
    targets = [n.removesuffix(".weight") for n, t in base.tensors.items()
               if n.endswith(".weight") and len(t.shape) == 2 and n.removesuffix(".weight").endswith(suffixes)]
    if not targets:
        raise UsageError(f"{base.id} has no module ending with {', '.join(suffixes)}")
    return sorted(targets)


def synth_adapters(store: ModelStore, base_id: str, count: int, *, rank: int = 8, alpha: float = 16.0,
                   seed: int = 0, prefix: str | None = None, suffixes: tuple[str, ...] = QUERY_VALUE,
                   progress: Callable[[int], None] = lambda i: None) -> list[str]:
    """``count`` LoRA members of ``base_id`` named ``<prefix>-<seed+i>``; returns their ids."""
    base = store.read_manifest(base_id)
    if not base.tensors or not base.weights or not base.family_graph:
        raise UsageError(f"{base_id} has no family graph: re-trace it (`shoal trace models/{base_id}.yaml --force`)")
    if not all(s in DEFAULT_SLOTS for s in suffixes):
        raise UsageError(f"the family graph has LoRA slots for {', '.join(DEFAULT_SLOTS)} only")
    targets = lora_targets(base, suffixes)
    width = max(4, len(str(seed + count - 1)))
    ids = [check_model_id(f"{prefix or base_id + '-lora'}-{seed + i:0{width}d}") for i in range(count)]
    dtype = next(t for n, t in base.tensors.items() if n.endswith("LayerNorm.weight")).dtype
    torch_dtype = {"BF16": torch.bfloat16, "F16": torch.float16}.get(dtype, torch.float32)
    with SharedBase(store, base) as shared:
        for i, model_id in enumerate(ids):
            g = torch.Generator().manual_seed(seed + i)
            own: dict[str, torch.Tensor] = {}
            for target in targets:
                out_f, in_f = base.tensors[f"{target}.weight"].shape
                own[f"{target}.lora_A"] = (torch.randn(rank, in_f, generator=g) / in_f ** 0.5).to(torch_dtype)
                own[f"{target}.lora_B"] = (torch.randn(out_f, rank, generator=g) * 0.02).to(torch_dtype)
            shared.push(model_id, own, {
                "adapter": Adapter(rank=rank, alpha=alpha, targets=targets, base=base_id),
                "spec_sha256": f"lora:{base.spec_sha256}:{seed + i}:{rank}"})
            progress(i + 1)
    return ids
