"""The contract between the runtime and a model kind.

The runtime owns queues, batching and threads; a handler only turns request bodies
into inputs (on the event loop: validation only, no heavy work) and runs
preprocess -> infer -> postprocess for a batch (on an executor thread).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.family.members import FamilyPool
from shoal.graphs import GraphCache
from shoal.server.errors import BadRequest
from shoal.server.v2_codec import InferRequest
from shoal.server.v2_tensors import Tensor
from shoal.store.manifest import Manifest


@dataclass(frozen=True)
class LoadContext:
    """What a handler needs to know about the process it is loaded into."""

    torch_device: str  # map_location, e.g. "cpu" or "cuda:0"
    device_kind: str  # cpu | cuda | neuron
    graphs: GraphCache = field(default_factory=GraphCache, compare=False)  # shared graphs of this process
    families: FamilyPool = field(default_factory=FamilyPool, compare=False)  # resident families' shared tensors
    # family keys served through the family graph: those with an adapter member or two members in the catalog
    family_keys: set[str] = field(default_factory=set, compare=False)


@dataclass
class Parsed:
    """A request's inputs (one batch item each) and whether the client sent a single input."""

    inputs: list[Any]
    single: bool


@dataclass
class StageTimes:
    preprocess_s: float = 0.0
    inference_s: float = 0.0
    postprocess_s: float = 0.0


class Handler(ABC):
    """One loaded model. Subclasses implement parsing, the three stages and the KServe v2 mapping."""

    def __init__(self, manifest: Manifest, folder: Path, ctx: LoadContext) -> None:
        self.manifest = manifest
        self.folder = folder
        self.ctx = ctx

    # -- request side (event loop: cheap checks only) --
    @abstractmethod
    def parse(self, body: Any) -> Parsed:
        """Validated inputs from a JSON body; Unprocessable naming the field otherwise."""

    def from_query(self, params: Mapping[str, str]) -> Any:
        """A JSON body built from query parameters (``GET /predictions/{id}?seq_0=...``)."""
        raise BadRequest(f"model {self.manifest.id} takes no query-string requests: POST a JSON body")

    @abstractmethod
    def parse_v2(self, request: InferRequest) -> list[Any]:
        """Inputs from a KServe v2 infer request (typed tensors, whichever wire they came over)."""

    @abstractmethod
    def to_v2(self, results: list[Any]) -> list[Tensor]:
        """KServe v2 output tensors for ``results``."""

    @property
    def v2_output_names(self) -> list[str]:
        return [o["name"] for o in self.v2_metadata().get("outputs", [])]

    @abstractmethod
    def v2_metadata(self) -> dict[str, Any]:
        """``inputs`` and ``outputs`` tensor descriptions for ``GET /v2/models/{id}``."""

    # -- batch side (executor thread) --
    @property
    def batch_limit(self) -> int:
        """Largest batch one forward takes (static graphs: exactly this many rows)."""
        return self.manifest.static_batch or 1 << 30

    @abstractmethod
    def preprocess(self, inputs: list[Any]) -> Any: ...

    @abstractmethod
    def infer(self, batch: Any) -> Any: ...

    @abstractmethod
    def postprocess(self, outputs: Any, batch: Any, inputs: list[Any]) -> list[Any]: ...

    @property
    def batch_group(self) -> str | None:
        """Models with the same non-None group may share one batch (members of a family): ``run_rows``."""
        return None

    def run_rows(self, owners: list["Handler"], inputs: list[Any], chunk: int) -> tuple[list[Any], StageTimes]:
        """Like ``run``, for a batch whose input i belongs to the model of ``owners[i]`` (one batch group)."""
        raise NotImplementedError(f"model {self.manifest.id} batches only with itself")

    def run(self, inputs: list[Any], chunk: int) -> tuple[list[Any], StageTimes]:
        """All three stages over ``inputs``, in forward-sized chunks; returns one result per input."""
        return self._run_stages(inputs, chunk, lambda batch, start: self.infer(batch),
                                lambda out, batch, part, start: self.postprocess(out, batch, part))

    def _run_stages(self, inputs: list[Any], chunk: int, infer: Callable[[Any, int], Any],
                    postprocess: Callable[[Any, Any, list[Any], int], list[Any]]) -> tuple[list[Any], StageTimes]:
        """preprocess -> ``infer(batch, offset)`` -> ``postprocess(out, batch, part, offset)`` per chunk, timed."""
        times = StageTimes()
        results: list[Any] = []
        step = max(1, min(chunk, self.batch_limit))
        for start in range(0, len(inputs), step):
            part = inputs[start:start + step]
            t0 = time.perf_counter()
            batch = self.preprocess(part)
            t1 = time.perf_counter()
            out = infer(batch, start)
            t2 = time.perf_counter()
            results.extend(postprocess(out, batch, part, start))
            t3 = time.perf_counter()
            times.preprocess_s += t1 - t0
            times.inference_s += t2 - t1
            times.postprocess_s += t3 - t2
        return results, times

    @abstractmethod
    def sample_inputs(self) -> list[Any]:
        """A small valid input list, used to warm the graph up right after loading."""

    def warmup(self) -> None:
        """Run the graph until it is optimised, so no user request pays for it: once under the legacy
        graph executor the server uses, twice under TorchScript's profiling executor (it records
        shapes on the first call and optimises on the second)."""
        for _ in range(2 if profiling_executor_on() else 1):
            self.run(self.sample_inputs(), 1 << 30)

    def close(self) -> None:
        """Drop references to weights so their memory can be returned."""


def profiling_executor_on() -> bool:
    import torch

    previous = torch._C._jit_set_profiling_executor(True)
    torch._C._jit_set_profiling_executor(previous)
    return bool(previous)
