"""A generic codec for models that take and return rows of numbers: reuse it as is for a new kind.

Native JSON: ``{"inputs": [[...], ...]}`` (a batch of rows) or ``{"input": [...]}`` (one row);
the result of a row is a list of numbers. KServe v2: one numeric tensor ``input`` of shape
``[N, ...]`` in, one FP32 tensor ``output`` of shape ``[N, ...]`` out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shoal.server.codecs.base import Codec, Parsed
from shoal.server.errors import Unprocessable
from shoal.server.schemas import MAX_INPUTS
from shoal.server.v2_codec import InferRequest
from shoal.server.v2_tensors import Tensor, tensor
from shoal.store.manifest import Manifest


class NumericCodec(Codec):
    """Rows of numbers in (each a list, one batch item), rows of numbers out."""

    def parse(self, body: Any) -> Parsed:
        if isinstance(body, dict) and "inputs" in body:
            rows = body["inputs"]
            if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_INPUTS:
                raise Unprocessable(f"inputs: a list of 1 to {MAX_INPUTS} rows of numbers")
            return Parsed([_row(r, f"inputs.{i}") for i, r in enumerate(rows)], single=False)
        if isinstance(body, dict) and "input" in body:
            return Parsed([_row(body["input"], "input")], single=True)
        raise Unprocessable('body: send {"input": [numbers]} or {"inputs": [[numbers], ...]}')

    def parse_v2(self, request: InferRequest) -> list[Any]:
        t = request.input("input") or request.inputs[0]
        if t.datatype == "BYTES" or t.data.ndim < 1 or not 1 <= t.data.shape[0] <= MAX_INPUTS:
            raise Unprocessable(f"inputs.{t.name}: a numeric tensor of 1 to {MAX_INPUTS} rows is required")
        return [row.astype(np.float32) for row in t.data]

    def to_v2(self, results: list[Any]) -> list[Tensor]:
        return [tensor("output", "FP32", np.asarray(results, dtype=np.float32))]

    @classmethod
    def v2_metadata(cls, manifest: Manifest) -> dict[str, Any]:
        return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, -1]}],
                "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, -1]}]}


def _row(value: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise Unprocessable(f"{where}: must be numbers") from None
    if arr.ndim != 1 or arr.size == 0:
        raise Unprocessable(f"{where}: must be a non-empty list of numbers")
    return arr
