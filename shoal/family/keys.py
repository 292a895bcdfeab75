"""Which tensors a family shares and which each member brings: one rule for trace, pack and the server.

A member brings its vectors (biases, LayerNorm scales and shifts), its head (classifier, pooler,
QA outputs) and its LoRA matrices: small, and applied per row of a mixed batch. Everything else
(embedding tables, the encoder's matrices, int8 scales) is the family's: models whose shared
tensors have the same digests under the same graph are one family, whatever their ids.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from shoal.store.manifest import Manifest, TensorEntry

HEAD_MARKERS = ("classifier", "qa_outputs", "pooler")
LORA_SUFFIXES = (".lora_A", ".lora_B")


def is_head(name: str) -> bool:
    return any(marker in name for marker in HEAD_MARKERS)


def is_own(name: str, entry: TensorEntry) -> bool:
    """A tensor each member of a family may have its own value of (applied per row of a batch)."""
    return _is_own(name, len(entry.shape))


@lru_cache(maxsize=1 << 16)
def _is_own(name: str, ndim: int) -> bool:
    """Remembered: 10,000 members list the same ~100 names, and pack and listings ask for each."""
    return name.endswith(LORA_SUFFIXES) or is_head(name) or (ndim == 1 and name.endswith(
        (".bias", "LayerNorm.weight", "LayerNorm.bias", "layer_norm.weight", "layer_norm.bias")))


def shared_tensors(manifest: Manifest) -> dict[str, TensorEntry]:
    return {n: t for n, t in manifest.tensors.items() if not is_own(n, t)}


def family_key(manifest: Manifest) -> str | None:
    """Equal for models that can share one batch: same family graph, same shared tensors. None: no family."""
    if not manifest.tensors or not manifest.family_graph:
        return None
    graph = manifest.files.get(manifest.family_graph)
    if graph is None:
        return None
    h = hashlib.sha256(graph.sha256.encode())
    for name, t in sorted(shared_tensors(manifest).items()):
        h.update(f"{name}={t.sha256};".encode())
    return h.hexdigest()[:16]


def shared_bytes(manifest: Manifest) -> int:
    """Bytes the model shares with its family (held once per process however many members are resident)."""
    return sum(t.nbytes for t in shared_tensors(manifest).values())


def own_bytes(manifest: Manifest) -> int:
    return sum(t.nbytes for n, t in manifest.tensors.items() if is_own(n, t))
