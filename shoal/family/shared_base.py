"""Members written over a stored base: only their own tensors in their own file, the rest by reference.

Why: a synthesized partial fine-tune or LoRA adapter differs from its base in a few hundred
kilobytes; writing the base's 90 MB again per member made synth slow and (before the store kept
contents once) the store huge. Every member's files are the base's graph, tokenizer and family graph
(the same bytes), the base's weights file as ``shards/<first 16 hex of its sha256>.safetensors``
(identical across members, so the content-addressed store keeps it once) and ``weights.safetensors``
with the member's own tensors. Its manifest's ``tensors`` name the file (and key) of each tensor,
which is how the loader finds it (shoal/graphs.py ``read_tensors``). The base's digests are computed
once per synth run, not per member.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from shoal.store.base import ModelStore
from shoal.store.manifest import FileEntry, Manifest, TensorEntry
from shoal.store.tensors import describe_tensors

OWN_FILE = "weights.safetensors"


def shard_name(base: Manifest) -> str:
    assert base.weights is not None
    return f"shards/{base.files[base.weights].sha256[:16]}.safetensors"


class SharedBase:
    """A staging folder holding a base's shared files once, from which members are pushed one by one."""

    def __init__(self, store: ModelStore, base: Manifest) -> None:
        assert base.weights is not None
        self.store = store
        self.base = base
        folder = store.fetch(base.id)
        self.staging = Path(tempfile.mkdtemp(prefix=".shoal-synth-", dir=_scratch_near(store)))
        self.shard = shard_name(base)
        self.files: dict[str, FileEntry] = {}
        for name, entry in base.files.items():
            dst = self.staging / (self.shard if name == base.weights else name)
            dst.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(folder / name, dst)
            self.files[self.shard if name == base.weights else name] = entry
        listed = base.tensors or describe_tensors(folder / base.weights, base.weights)  # hashed once, if ever
        self.tensors: dict[str, TensorEntry] = {
            n: t.model_copy(update={"file": self.shard}) if t.file == base.weights else t for n, t in listed.items()}

    def __enter__(self) -> "SharedBase":
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def push(self, model_id: str, own: dict[str, torch.Tensor], update: dict[str, Any]) -> Manifest:
        """Push member ``model_id``: ``own`` replaces (or adds to) the base's tensors, the rest stay the base's."""
        from safetensors.torch import save_file

        path = self.staging / OWN_FILE
        save_file({n: t.contiguous() for n, t in own.items()}, str(path))
        mine = describe_tensors(path, OWN_FILE)
        tensors = {**{n: t for n, t in self.tensors.items() if n not in mine}, **mine}
        used = {t.file for t in tensors.values()}
        files = {n: e for n, e in self.files.items() if n != self.shard or self.shard in used}
        files[OWN_FILE] = FileEntry(sha256=_sha256(path), size=path.stat().st_size)
        manifest = self.base.model_copy(update={
            "id": model_id, "base": self.base.id, "weights": OWN_FILE, "tensors": tensors, "files": files,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), **update})
        try:
            self.store.push(self.staging, manifest)
        finally:
            path.unlink(missing_ok=True)
        return manifest


def _sha256(path: Path) -> str:
    from shoal.store.digests import file_sha256

    return file_sha256(path)


def _scratch_near(store: ModelStore) -> Path | None:
    """A folder on the store's own filesystem when it is local, so staging links files instead of copying."""
    root = getattr(store, "root", None)
    if isinstance(root, Path):
        root.mkdir(parents=True, exist_ok=True)
        return root
    return None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
