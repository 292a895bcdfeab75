"""The contract between the runtime and a model kind: model execution.

The runtime owns queues, batching and threads; a handler loads its artifact and runs
preprocess -> infer -> postprocess for a batch (on an executor thread). Reading requests
and writing protocol outputs is its codec's job (``handlers.codec``, a
``shoal.server.codecs.base.Codec`` named by ``codec_class``), on the event loop.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.family.members import FamilyPool
from shoal.graphs import GraphCache
from shoal.server.codecs.base import Codec, Parsed  # noqa: F401 (Parsed re-exported: the runtime's type)
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
class StageTimes:
    preprocess_s: float = 0.0
    inference_s: float = 0.0
    postprocess_s: float = 0.0


class Handler(ABC):
    """One loaded model. Subclasses implement the three stages; ``codec_class`` reads and writes the wire."""

    codec_class: type[Codec] | None = None

    def __init__(self, manifest: Manifest, folder: Path, ctx: LoadContext) -> None:
        self.manifest = manifest
        self.folder = folder
        self.ctx = ctx
        self._codec = self.codec_class(manifest) if self.codec_class is not None else None

    @property
    def codec(self) -> Codec:
        """The protocol side of this model (routes and the gRPC servicer talk to it, never to the graph)."""
        if self._codec is None:
            raise RuntimeError(f"model kind {self.manifest.kind!r} has no codec (set codec_class)")
        return self._codec

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
