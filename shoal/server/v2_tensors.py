"""Typed KServe v2 tensors: the one in-memory form of inputs and outputs, whatever the wire.

The HTTP JSON body, Triton's binary tensor data extension and the gRPC protocol's
typed or raw contents all become a ``Tensor`` here (and outputs leave as one), so
handlers see numpy arrays and never a transport. BYTES elements stay ``str`` when the
client sent JSON strings and are ``bytes`` when it sent raw bytes: a handler can tell
text (or base64) from a file's bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np

from shoal.server.errors import Unprocessable

# v2 datatype -> numpy dtype of the wire format (little endian, row-major). BF16 travels as its 16 bits
# and lives in memory as float32; BYTES is length-prefixed on the wire and an object array in memory.
WIRE_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
}
DATATYPES = (*WIRE_DTYPES, "BYTES")
_PREFIX = struct.Struct("<I")


@dataclass(frozen=True)
class Tensor:
    """A named, typed, shaped tensor. ``data`` has exactly ``shape``; BYTES: an object array of str/bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def values(self) -> list[Any]:
        """The elements in row-major order, as Python values."""
        return self.data.reshape(-1).tolist()


def tensor(name: str, datatype: str, values: Any, shape: Sequence[int] | None = None) -> Tensor:
    """An output tensor built by a handler from a list or array (shape defaults to the array's own)."""
    if datatype == "BYTES":
        arr = np.empty(len(values), dtype=object)
        arr[:] = list(values)
    else:
        arr = np.asarray(values, dtype=np.float32 if datatype == "BF16" else WIRE_DTYPES[datatype])
    dims = tuple(arr.shape if shape is None else shape)
    return Tensor(name, datatype, dims, arr.reshape(dims))


def check_shape(name: str, datatype: str, shape: Sequence[Any]) -> tuple[int, ...]:
    """``shape`` as ints; 422 for an unknown datatype or a negative or non-integer dimension."""
    if datatype not in DATATYPES:
        raise Unprocessable(f"inputs.{name}: datatype {datatype!r} is not a KServe v2 datatype "
                            f"(one of {', '.join(DATATYPES)})")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise Unprocessable(f"inputs.{name}: shape {list(shape)} must list non-negative integers")
    return tuple(shape)


def from_values(name: str, datatype: str, shape: Sequence[Any], values: Sequence[Any],
                parameters: Mapping[str, Any] | None = None) -> Tensor:
    """A tensor from JSON ``data`` (flat or nested, row-major) or gRPC typed contents; 422 when they disagree."""
    dims = check_shape(name, datatype, shape)
    flat = flatten(name, values)
    if len(flat) != prod(dims):
        raise Unprocessable(f"inputs.{name}: shape {list(dims)} holds {prod(dims)} elements but data has {len(flat)}")
    if datatype == "BYTES":
        if not all(isinstance(v, (str, bytes)) for v in flat):
            raise Unprocessable(f"inputs.{name}: BYTES data must be strings")
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return Tensor(name, datatype, dims, arr.reshape(dims), parameters or {})
    _check_kinds(name, datatype, flat)
    try:
        arr = np.asarray(flat, dtype=np.float32 if datatype == "BF16" else WIRE_DTYPES[datatype])
    except (OverflowError, ValueError, TypeError) as exc:
        raise Unprocessable(f"inputs.{name}: data do not fit {datatype}: {exc}") from None
    return Tensor(name, datatype, dims, arr.reshape(dims), parameters or {})


def from_raw(name: str, datatype: str, shape: Sequence[Any], raw: bytes,
             parameters: Mapping[str, Any] | None = None) -> Tensor:
    """A tensor from raw little-endian bytes (Triton's binary data, gRPC ``raw_input_contents``)."""
    dims = check_shape(name, datatype, shape)
    count = prod(dims)
    if datatype == "BYTES":
        items = split_bytes(name, raw)
        if len(items) != count:
            raise Unprocessable(f"inputs.{name}: shape {list(dims)} holds {count} elements but the binary data "
                                f"has {len(items)}")
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return Tensor(name, datatype, dims, arr.reshape(dims), parameters or {})
    wire = WIRE_DTYPES[datatype]
    if len(raw) != count * wire.itemsize:
        raise Unprocessable(f"inputs.{name}: shape {list(dims)} of {datatype} needs {count * wire.itemsize} bytes "
                            f"of binary data, got {len(raw)}")
    arr = np.frombuffer(raw, dtype=wire).copy()
    if datatype == "BF16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return Tensor(name, datatype, dims, arr.reshape(dims), parameters or {})


def to_raw(t: Tensor) -> bytes:
    """The tensor's raw bytes as Triton and gRPC carry them (BYTES: each element with a 4-byte length)."""
    if t.datatype == "BYTES":
        parts = []
        for v in t.data.reshape(-1).tolist():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts += [_PREFIX.pack(len(b)), b]
        return b"".join(parts)
    if t.datatype == "BF16":
        bits = np.ascontiguousarray(t.data, dtype=np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()  # round to nearest even
    return np.ascontiguousarray(t.data, dtype=WIRE_DTYPES[t.datatype]).tobytes()


def to_json_values(t: Tensor) -> list[Any]:
    """Row-major elements for a JSON ``data`` field (bytes that are not UTF-8 cannot go there: use binary)."""
    flat = t.values()
    if t.datatype == "BYTES":
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in flat]
    return flat


def split_bytes(name: str, raw: bytes) -> list[bytes]:
    """The elements of a serialized BYTES tensor: each a 4-byte little-endian length, then that many bytes."""
    items, at = [], 0
    view = memoryview(raw)
    while at < len(raw):
        if at + 4 > len(raw):
            raise Unprocessable(f"inputs.{name}: BYTES binary data ends inside an element's 4-byte length")
        (size,) = _PREFIX.unpack_from(raw, at)
        at += 4
        if at + size > len(raw):
            raise Unprocessable(f"inputs.{name}: BYTES element of {size} bytes runs past the end of its data")
        items.append(bytes(view[at:at + size]))
        at += size
    return items


def flatten(name: str, values: Any) -> list[Any]:
    """Nested lists in row-major order, without recursion (deep nesting is a 422, never a crash)."""
    if not isinstance(values, (list, tuple)):
        raise Unprocessable(f"inputs.{name}: data must be a list")
    out: list[Any] = []
    stack: list[Any] = [iter(values)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, (list, tuple)):
                if len(stack) > 32:
                    raise Unprocessable(f"inputs.{name}: data is nested deeper than 32 levels")
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _check_kinds(name: str, datatype: str, flat: list[Any]) -> None:
    """JSON numbers must suit the datatype: booleans for BOOL, integers for integer types."""
    if datatype == "BOOL":
        ok = all(isinstance(v, bool) for v in flat)
        want = "true or false"
    elif datatype.startswith(("INT", "UINT")):
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in flat)
        want = "integers"
    else:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat)
        want = "numbers"
    if not ok:
        raise Unprocessable(f"inputs.{name}: {datatype} data must be {want}")
