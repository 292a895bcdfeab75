"""What resident models cost in memory, with every tensor counted once however many models hold it.

Why: a family of fine-tunes shares its embedding tables and encoder matrices. Charging each member
its full weights would let 92 MiniLM members fill a 4 GiB budget that really holds thousands of
them; charging only what a model adds (its tensors no resident model holds yet, plus its own
overhead) makes the budget the memory the process really uses.
"""

from __future__ import annotations

from shoal.family.keys import family_key
from shoal.store.manifest import Manifest

# What a swapped-in model costs beyond its mapped weights (handler, tokenizer reference, batcher,
# metrics children), measured by benchmarks/server_density.py --marginal (docs/BENCHMARKS.md `## long tail`).
SWAPIN_OVERHEAD_BYTES = 1 << 20
# A family member adds its handler, batcher, manifest and metrics, not a mapping of its own: 10,000
# resident members measured ~131 KiB each beyond their own tensors (benchmarks/family_density.py,
# docs/BENCHMARKS.md `## families`), rounded up.
MEMBER_OVERHEAD_BYTES = 136 << 10


def _frozen_cost(manifest: Manifest) -> int:
    """A frozen artifact: its measured resident size, at least its artifact file."""
    artifact = manifest.files.get(manifest.artifact)
    measured = manifest.profile.resident_bytes if manifest.profile else 0
    return max(measured, artifact.size if artifact else 0) or manifest.total_bytes


def overhead(manifest: Manifest) -> int:
    return MEMBER_OVERHEAD_BYTES if family_key(manifest) else SWAPIN_OVERHEAD_BYTES


def model_cost(manifest: Manifest) -> int:
    """Bytes a model counts against the budget when nothing it shares is resident yet."""
    if manifest.tensors:
        return overhead(manifest) + sum(t.nbytes for t in _unique(manifest).values())
    if manifest.weights and manifest.weight_bytes:
        return manifest.weight_bytes + SWAPIN_OVERHEAD_BYTES
    return _frozen_cost(manifest)


def _unique(manifest: Manifest) -> dict[str, object]:
    return {t.sha256: t for t in manifest.tensors.values()}


class TensorLedger:
    """Reference counts of the tensors resident models hold, by digest."""

    def __init__(self) -> None:
        self._refs: dict[str, int] = {}

    def cost(self, manifest: Manifest) -> int:
        """Bytes loading ``manifest`` would add now (tensors already held by a resident model are free)."""
        if not manifest.tensors:
            return model_cost(manifest)
        return overhead(manifest) + sum(t.nbytes for d, t in _unique(manifest).items()  # type: ignore[attr-defined]
                                        if d not in self._refs)

    def hold(self, manifest: Manifest) -> int:
        """Count ``manifest``'s tensors as held; returns the bytes that added."""
        added = self.cost(manifest)
        for digest in _unique(manifest):
            self._refs[digest] = self._refs.get(digest, 0) + 1
        return added

    def release(self, manifest: Manifest) -> int:
        """Drop ``manifest``'s hold; returns the bytes freed (tensors no other resident model holds)."""
        if not manifest.tensors:
            return model_cost(manifest)
        freed = overhead(manifest)
        for digest, t in _unique(manifest).items():
            left = self._refs.get(digest, 0) - 1
            if left <= 0:
                self._refs.pop(digest, None)
                freed += t.nbytes  # type: ignore[attr-defined]
            else:
                self._refs[digest] = left
        return freed
