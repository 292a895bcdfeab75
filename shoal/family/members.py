"""Families in a server process: the shared tensors held once, each member's own tensors beside them.

A ``FamilyGroup`` exists while any member of its family is resident: it holds the family graph
and the shared tensors (memory-mapped from the disk tier, faulted in once). A member joining a
resident family reads only its own tensors: its vectors, head and LoRA factors, a few hundred
kilobytes. Own tensors are copied out of their files (and equal ones are held once, by digest),
so 10,000 resident members do not keep 10,000 file mappings open.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from shoal.family import graph as family_graph
from shoal.family.keys import family_key
from shoal.graphs import read_tensors
from shoal.store.manifest import Manifest


class TensorPool:
    """Own tensors by content: members whose head or vectors are equal share one copy in memory."""

    def __init__(self) -> None:
        self._held: "weakref.WeakValueDictionary[str, torch.Tensor]" = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def get(self, key: str, make: Any) -> torch.Tensor:
        with self._lock:
            hit = self._held.get(key)
        if hit is not None:
            return hit
        made = make()
        with self._lock:
            return self._held.setdefault(key, made)


class FamilyGroup:
    """One resident family: its graph, layout and shared tensors."""

    def __init__(self, key: str, graph: Any, layout: family_graph.Layout, shared: list[torch.Tensor]) -> None:
        self.key = key
        self.graph = graph
        self.layout = layout
        self.shared = shared
        self.members = 0
        self.warm: set[tuple] = set()  # (batch rows, distinct members) shapes the graph has run with

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                members: list["FamilyMember"]) -> Any:
        """Run one batch; ``members[i]`` owns row i (rows of one member share its stacked tensors)."""
        index: dict[int, int] = {}
        distinct: list[family_graph.MemberTensors] = []
        rows = []
        for m in members:
            slot = index.get(id(m))
            if slot is None:
                slot = index[id(m)] = len(distinct)
                distinct.append(m.tensors)
            rows.append(slot)
        vectors, heads, lora_a, lora_b = family_graph.stack(distinct)
        device = input_ids.device
        rows_t = torch.tensor(rows, dtype=torch.int64, device=device)
        return self.graph(input_ids, attention_mask, rows_t, self.shared, vectors.to(device),
                          [h.to(device) for h in heads], [a.to(device) for a in lora_a],
                          [b.to(device) for b in lora_b])


class FamilyMember:
    """A resident member: its family and its own tensors in the graph's layout."""

    def __init__(self, group: FamilyGroup, tensors: family_graph.MemberTensors) -> None:
        self.group = group
        self.tensors = tensors


class FamilyPool:
    """Every resident family of this process, by family key."""

    def __init__(self) -> None:
        self._groups: dict[str, FamilyGroup] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self.own = TensorPool()

    def __len__(self) -> int:
        return len(self._groups)

    def join(self, manifest: Manifest, folder: Path, device: str) -> FamilyMember:
        """The member ``manifest`` describes, loading its family first if none of it is resident."""
        key = family_key(manifest)
        if key is None:
            raise ValueError(f"{manifest.id} has no family (no tensors or no family graph)")
        with self._loading[key]:  # one loader per family: the second member waits, then shares
            with self._lock:
                group = self._groups.get(key)
            if group is None:
                group = self._load_group(key, manifest, folder, device)
            member = FamilyMember(group, self._member_tensors(group, manifest, folder, device))
            with self._lock:
                group.members += 1
                self._groups[key] = group
        return member

    def leave(self, member: FamilyMember) -> None:
        """The member was evicted; the family's shared tensors go with its last member."""
        with self._lock:
            group = member.group
            group.members -= 1
            if group.members <= 0 and self._groups.get(group.key) is group:
                del self._groups[group.key]

    def _load_group(self, key: str, manifest: Manifest, folder: Path, device: str) -> FamilyGroup:
        from shoal.graphs import fault_in, read_ahead

        assert manifest.family_graph is not None
        graph, layout = family_graph.load(folder / manifest.family_graph, device)
        for file in {manifest.tensors[n].file for n in layout.shared if n in manifest.tensors}:
            read_ahead(folder / file)
        tensors = read_tensors(folder, manifest, layout.shared, device)
        shared = [tensors[n] for n in layout.shared]
        if device == "cpu":
            fault_in(shared)
        return FamilyGroup(key, graph, layout, shared)

    def _member_tensors(self, group: FamilyGroup, manifest: Manifest, folder: Path,
                        device: str) -> family_graph.MemberTensors:
        layout = group.layout
        vector_names = [name for name, _, _ in layout.vectors]
        lora_names: list[str] = []
        adapter = manifest.adapter
        if adapter is not None:
            missing = [t for t in adapter.targets if t not in layout.slots]
            if missing:
                raise ValueError(f"the adapter of {manifest.id} targets {missing[0]!r}, which has no LoRA slot in "
                                 f"its family graph (slots: {', '.join(s.rsplit('.', 3)[-3] for s in layout.slots[:3])}"
                                 " ...); re-trace the base with those slots")
            lora_names = [f"{t}.lora_{ab}" for t in adapter.targets for ab in ("A", "B")]
        digests = {n: manifest.tensors[n].sha256 for n in vector_names + layout.heads if n in manifest.tensors}
        wanted = list(digests) + lora_names
        loaded: dict[str, torch.Tensor] = {}

        def tensors() -> dict[str, torch.Tensor]:
            if not loaded:
                loaded.update(read_tensors(folder, manifest, wanted, "cpu"))
            return loaded

        dtype = getattr(torch, layout.dtype)
        vectors_key = "vectors:" + hashlib.sha256("".join(digests[n] for n in vector_names).encode()).hexdigest()
        vectors = self.own.get(vectors_key, lambda: _flat(layout, tensors(), dtype))
        heads = [self.own.get(digests[n], lambda n=n: tensors()[n].to(device).clone()) for n in layout.heads]
        lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if adapter is not None:
            for target in adapter.targets:
                a = tensors()[f"{target}.lora_A"].float()
                b = tensors()[f"{target}.lora_B"].float() * adapter.scale
                if a.shape[0] != adapter.rank or b.shape[1] != adapter.rank:
                    raise ValueError(f"{manifest.id}: LoRA factors of {target} do not have rank {adapter.rank}")
                lora[target] = (a, b)
        member = family_graph.member_tensors(layout, {}, lora, vectors=vectors.to(device), heads=heads)
        return family_graph.MemberTensors(member.vectors, member.heads, [x.to(device) for x in member.lora_a],
                                          [x.to(device) for x in member.lora_b])


def _flat(layout: family_graph.Layout, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    flat = torch.empty(layout.width, dtype=dtype)
    for name, start, n in layout.vectors:
        flat[start:start + n] = tensors[name].reshape(-1).to(dtype)
    return flat
