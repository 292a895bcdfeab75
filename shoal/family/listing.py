"""Bytes per model and in total with a family's shared bytes counted once: one rule for `GET /models`
and `shoal models list`.

Why: 1,000 members of a MiniLM family list 45 MB each, but hold 45 MB once plus well under a
megabyte each. A listing that adds up weights per model overstates the memory and the store by
three orders of magnitude; both views say what each model brings and what its family shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from shoal.family.keys import family_key, own_bytes, shared_bytes
from shoal.store.manifest import Manifest

SHORT_KEY = 8  # hex digits of a family key shown to people (the full key is 16)


def short_key(key: str | None) -> str | None:
    return key[:SHORT_KEY] if key else None


@dataclass(frozen=True)
class ModelBytes:
    """A model's weights split into what it brings and what it shares with its family."""

    family: str | None  # full family key; None: no family (all its bytes are its own)
    own_bytes: int
    shared_bytes: int


def model_bytes(manifest: Manifest) -> ModelBytes:
    key = family_key(manifest)
    if key is None:  # a frozen artifact holds its weights inside: its measured parameter bytes
        p = manifest.profile
        return ModelBytes(None, manifest.weight_bytes or (p.param_bytes if p else 0), 0)
    return ModelBytes(key, own_bytes(manifest), shared_bytes(manifest))


@dataclass
class FamilyTotal:
    key: str
    members: int
    shared_bytes: int


@dataclass
class Totals:
    """The sum over models where each family's shared bytes count once."""

    own_bytes: int = 0
    shared_bytes: int = 0
    families: dict[str, FamilyTotal] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.own_bytes + self.shared_bytes

    def add(self, b: ModelBytes) -> None:
        self.own_bytes += b.own_bytes
        if b.family is None:
            return
        fam = self.families.get(b.family)
        if fam is None:
            self.families[b.family] = FamilyTotal(b.family, 1, b.shared_bytes)
            self.shared_bytes += b.shared_bytes
        else:
            fam.members += 1


def totals(items: Iterable[ModelBytes]) -> Totals:
    out = Totals()
    for b in items:
        out.add(b)
    return out


_CACHE: dict[int, tuple[Manifest, ModelBytes]] = {}
_CACHE_MAX = 1 << 17


def cached_model_bytes(manifest: Manifest) -> ModelBytes:
    """:func:`model_bytes`, remembered per manifest object: a server lists 10,000 members per `GET /models`,
    and a family key hashes every shared tensor's digest."""
    hit = _CACHE.get(id(manifest))
    if hit is not None and hit[0] is manifest:
        return hit[1]
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    b = model_bytes(manifest)
    _CACHE[id(manifest)] = (manifest, b)
    return b
