"""Safetensors dtype names and their sizes: what a tensor entry needs to know its bytes.

Its own module so the manifest (which sizes its tensor entries) and ``tensors.py`` (which reads
safetensors files into entries) both use it without importing each other.
"""

from __future__ import annotations

# safetensors dtype names -> bytes per element
SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
         "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def dtype_size(dtype: str) -> int:
    try:
        return SIZES[dtype]
    except KeyError:
        raise ValueError(f"unknown tensor dtype {dtype!r}") from None
