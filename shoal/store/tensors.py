"""Tensors by content: the digest that makes identical tensors one, and a safetensors file described by it.

Why: a fleet of fine-tunes shares most of its bytes with a base (frozen encoders, LoRA adapters,
retrained heads). Naming every tensor by the sha256 of its dtype, shape and bytes lets the store
keep a shared tensor once, the disk tier fetch it once and the server hold it once, whoever pushed
it and under whichever file name.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from shoal.store.manifest import TensorEntry

def digest(dtype: str, shape: list[int], data: bytes | memoryview) -> str:
    """sha256 over ``dtype``, ``shape`` and the raw little-endian bytes: equal tensors, equal digest."""
    h = hashlib.sha256(f"{dtype}:{','.join(map(str, shape))}:".encode())
    h.update(data)
    return h.hexdigest()


def read_header(path: Path) -> tuple[dict[str, dict], int]:
    """The safetensors header (name -> dtype, shape, data_offsets) and where the data starts."""
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > 100 << 20:
            raise ValueError(f"{path.name}: safetensors header of {length} bytes is not plausible")
        header = json.loads(fh.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


def describe_tensors(path: Path, file_name: str) -> dict[str, TensorEntry]:
    """Every tensor in the safetensors file ``path`` (stored as ``file_name``), by content digest."""
    header, start = read_header(path)
    out: dict[str, TensorEntry] = {}
    with open(path, "rb") as fh:
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            begin, end = info["data_offsets"]
            fh.seek(start + begin)
            data = fh.read(end - begin)
            out[name] = TensorEntry(sha256=digest(info["dtype"], info["shape"], data), file=file_name,
                                    dtype=info["dtype"], shape=list(info["shape"]))
    return dict(sorted(out.items()))
