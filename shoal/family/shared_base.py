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

import hashlib
import json
import os
import shutil
import struct
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
        # A member's tensors are small (~150 K values): on a busy 2-core host two intra-op threads made
        # each op ~25x slower (16 ms against 0.6 ms for a fresh 384x384 head) than one thread
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._threads)
        shutil.rmtree(self.staging, ignore_errors=True)

    def push(self, model_id: str, own: dict[str, torch.Tensor], update: dict[str, Any]) -> Manifest:
        """Push member ``model_id``: ``own`` replaces (or adds to) the base's tensors, the rest stay the base's."""
        path = self.staging / OWN_FILE
        entry, mine = write_tensors(path, own)
        tensors = {**{n: t for n, t in self.tensors.items() if n not in mine}, **mine}
        used = {t.file for t in tensors.values()}
        files = {n: e for n, e in self.files.items() if n != self.shard or self.shard in used}
        files[OWN_FILE] = entry
        manifest = self.base.model_copy(update={
            "id": model_id, "base": self.base.id, "weights": OWN_FILE, "tensors": tensors, "files": files,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), **update})
        try:
            self.store.push(self.staging, manifest)
        finally:
            path.unlink(missing_ok=True)
        return manifest


_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
           torch.int8: "I8", torch.uint8: "U8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64",
           torch.bool: "BOOL"}


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> tuple[FileEntry, dict[str, TensorEntry]]:
    """Write a safetensors file and describe it in the same pass: the file's sha256 and every tensor's
    content digest come from the bytes as they are written, not from reading the file back (the
    manifest's check before the push then finds the digest remembered). Tensors may share storage
    (views of one flat buffer). Layout as safetensors writes it: header padded to 8 bytes, wider
    dtypes first, so every tensor is aligned for memory mapping."""
    from shoal.store import digests
    from shoal.store.tensors import digest

    header: dict[str, dict[str, Any]] = {}
    chunks: list[memoryview] = []
    entries: dict[str, TensorEntry] = {}
    offset = 0
    for name, t in sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0])):
        dtype, shape = _DTYPES[t.dtype], list(t.shape)
        data = memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        entries[name] = TensorEntry(sha256=digest(dtype, shape, data), file=OWN_FILE, dtype=dtype, shape=shape)
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        for part in (struct.pack("<Q", len(head)), head, *chunks):
            h.update(part)
            fh.write(part)
    digests.remember(path, h.hexdigest())
    return FileEntry(sha256=h.hexdigest(), size=8 + len(head) + offset), dict(sorted(entries.items()))


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
