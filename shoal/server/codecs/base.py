"""The codec contract: request bodies -> a model's inputs, its results -> KServe v2 tensors.

Runs on the event loop: validation and cheap decoding only, never a forward pass. A codec
is built from the manifest alone, so metadata (``v2_metadata``) needs no loaded model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shoal.server.errors import BadRequest
from shoal.server.v2_codec import InferRequest
from shoal.server.v2_tensors import Tensor
from shoal.store.manifest import Manifest


@dataclass
class Parsed:
    """A request's inputs (one batch item each) and whether the client sent a single input."""

    inputs: list[Any]
    single: bool


class Codec(ABC):
    """One model's protocol side; subclasses say how its kind reads requests and writes v2 outputs."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    @abstractmethod
    def parse(self, body: Any) -> Parsed:
        """Validated inputs from a JSON body (or a ``MediaBody``); Unprocessable naming the field otherwise."""

    def from_query(self, params: Mapping[str, str]) -> Any:
        """A JSON body built from query parameters (``GET /predictions/{id}?seq_0=...``)."""
        raise BadRequest(f"model {self.manifest.id} takes no query-string requests: POST a JSON body")

    @abstractmethod
    def parse_v2(self, request: InferRequest) -> list[Any]:
        """Inputs from a KServe v2 infer request (typed tensors, whichever wire they came over)."""

    @abstractmethod
    def to_v2(self, results: list[Any]) -> list[Tensor]:
        """KServe v2 output tensors for ``results``."""

    @classmethod
    @abstractmethod
    def v2_metadata(cls, manifest: Manifest) -> dict[str, Any]:
        """``inputs`` and ``outputs`` tensor descriptions for ``GET /v2/models/{id}``, from the manifest alone."""

    @property
    def v2_output_names(self) -> list[str]:
        return [o["name"] for o in self.v2_metadata(self.manifest).get("outputs", [])]
