"""The shared-graph artifact: one TorchScript graph per architecture, weights in a safetensors file per model.

Why: a model whose weights are baked into a frozen TorchScript archive costs a
deserialisation, a re-optimisation and a warm-up forward on every swap-in (~300 ms
for a MiniLM). Tracing the wrapper with its parameters as *inputs* gives one graph that
every model of that architecture, shape and precision shares byte for byte; a model is
then only its weights, and swapping one in costs what mapping its safetensors file
costs (milliseconds). Measured on the 2-core dev CPU the weights-as-inputs graph runs as
fast as the frozen one (docs/BENCHMARKS.md `## long tail`).

The graph's ``forward(input_ids, attention_mask, weights: List[Tensor])`` takes the
weights in the order named by its extra file ``weight_names.json``; the weights file holds
tensors under those names.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHT_NAMES_FILE = "weight_names.json"
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _WeightsAsInputs(nn.Module):
    """Runs ``inner`` with its parameters replaced by the tensors passed in (what tracing records)."""

    def __init__(self, inner: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.inner = inner
        self.names = names

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                weights: list[torch.Tensor]) -> Any:
        from torch.nn.utils.stateless import _reparametrize_module  # what torch.func.functional_call uses

        with _reparametrize_module(self.inner, dict(zip(self.names, weights))):
            return self.inner(input_ids, attention_mask)


def parameter_names(module: nn.Module) -> list[str]:
    return [name for name, _ in module.named_parameters()]


def trace_graph(wrapper: nn.Module, example: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.jit.ScriptModule,
                                                                                        list[str]]:
    """Trace ``wrapper`` into a graph taking its parameters as inputs; returns (graph, weight names)."""
    names = parameter_names(wrapper)
    weights = [p.detach() for p in wrapper.parameters()]
    with torch.inference_mode():
        graph = torch.jit.trace(_WeightsAsInputs(wrapper, names), (*example, weights), check_trace=False)
    # Freezing drops the parameters the module still holds (the graph reads only its inputs) and
    # inlines the constant buffers (position ids), so the file is the graph alone, ~1 MB.
    return torch.jit.freeze(graph.eval()), names


def save_graph(graph: torch.jit.ScriptModule, names: list[str], path: Path) -> None:
    torch.jit.save(graph, str(path), _extra_files={WEIGHT_NAMES_FILE: json.dumps(names)})


def save_weights(wrapper: nn.Module, path: Path) -> None:
    """The wrapper's parameters, contiguous, under their names (safetensors: no pickle anywhere)."""
    from safetensors.torch import save_file

    save_file({name: p.detach().contiguous() for name, p in wrapper.named_parameters()}, str(path))


def load_graph(path: Path, map_location: str) -> tuple[Any, list[str]]:
    """The graph in ``path`` (checked to be TorchScript first) and the order of the weights it takes."""
    from shoal.artifacts import ArtifactRefused, load_torchscript

    extra = {WEIGHT_NAMES_FILE: ""}
    graph = load_torchscript(path, map_location, extra_files=extra)
    try:
        names = json.loads(extra[WEIGHT_NAMES_FILE])
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ArtifactRefused(f"{path.name} has no list of weight names ({WEIGHT_NAMES_FILE}): not a shared graph")
    return graph, names


def load_weights(path: Path, names: list[str], device: str) -> list[torch.Tensor]:
    """The weights in graph order, memory-mapped from ``path`` (on a CPU nothing is copied)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=device) as fh:
        present = set(fh.keys())
        missing = [n for n in names if n not in present]
        if missing:
            raise ValueError(f"{path.name} lacks {len(missing)} weight(s) the graph takes, e.g. {missing[0]!r}")
        return [fh.get_tensor(n) for n in names]


def read_tensors(folder: Path, manifest: Any, names: list[str], device: str) -> dict[str, torch.Tensor]:
    """The named tensors of ``manifest``, each from the file its ``tensors`` entry names (opened once per
    file), memory-mapped on a CPU: a family member's own tensors and the base's shared shard alike."""
    from collections import defaultdict

    from safetensors import safe_open

    by_file: dict[str, list[str]] = defaultdict(list)
    for name in names:
        entry = manifest.tensors.get(name)
        if entry is None:
            raise ValueError(f"{manifest.id} lists no tensor {name!r}, which its graph takes")
        by_file[entry.file].append(name)
    out: dict[str, torch.Tensor] = {}
    for file, wanted in by_file.items():
        with safe_open(str(folder / file), framework="pt", device=device) as fh:
            present = set(fh.keys())
            for name in wanted:
                key = manifest.tensors[name].key or name
                if key not in present:
                    raise ValueError(f"{file} lacks tensor {key!r} that the manifest of {manifest.id} places there")
                out[name] = fh.get_tensor(key)
    return out


def graph_weights(folder: Path, manifest: Any, names: list[str], device: str) -> list[torch.Tensor]:
    """The graph's weights in its order: from wherever the manifest's ``tensors`` place them, else from the
    one weights file (models traced before tensors were listed)."""
    if manifest.tensors:
        found = read_tensors(folder, manifest, names, device)
        return [found[n] for n in names]
    return load_weights(folder / manifest.weights, names, device)


class GraphCache:
    """One loaded graph per artifact sha256, shared by every model that names it.

    A graph is kept while any model uses it (and a few more, so a popular architecture
    is not re-read between an eviction and the next swap-in); the legacy executor
    optimises it on its first forward, so only the first model of an architecture
    pays a warm-up.
    """

    def __init__(self, keep: int = 8) -> None:
        self._graphs: dict[str, tuple[Any, list[str]]] = {}
        self._warm: dict[Any, list[tuple]] = {}  # graph object -> weight signature it ran with (optimised)
        self._lock = threading.Lock()
        self._keep = keep

    def get(self, sha256: str, path: Path, map_location: str) -> tuple[Any, list[str]]:
        with self._lock:
            hit = self._graphs.get(sha256)
        if hit is not None:
            return hit
        loaded = load_graph(path, map_location)
        with self._lock:
            if len(self._graphs) >= self._keep:
                self._warm.pop(self._graphs.pop(next(iter(self._graphs)))[0], None)
            return self._graphs.setdefault(sha256, loaded)

    def is_warm(self, graph: Any, weights: list[torch.Tensor]) -> bool:
        """The graph ran (and was optimised) with weights of exactly these shapes and dtypes."""
        return self._warm.get(graph) == signature(weights)

    def mark_warm(self, graph: Any, weights: list[torch.Tensor]) -> None:
        self._warm[graph] = signature(weights)


def signature(weights: list[torch.Tensor]) -> list[tuple]:
    return [(tuple(t.shape), t.dtype) for t in weights]


class BoundGraph:
    """A shared graph bound to one model's weights: called like the frozen module it replaces."""

    def __init__(self, graph: Any, weights: list[torch.Tensor]) -> None:
        self.graph = graph
        self.weights = weights

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        return self.graph(input_ids, attention_mask, self.weights)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.weights)


def load_text_model(folder: Path, manifest: Any, device: str = "cpu") -> Any:
    """A stored text model as a callable ``(input_ids, attention_mask)``, whichever artifact form it has.

    For tools and tests that run a model outside the server (the in-process limit, reference
    outputs): the shared graph bound to the model's weights, or the frozen module.
    """
    from shoal.artifacts import load_torchscript

    if manifest.weights:
        graph, names = load_graph(folder / manifest.artifact, device)
        return BoundGraph(graph, graph_weights(folder, manifest, names, device))
    return load_torchscript(folder / manifest.artifact, device)


def read_ahead(path: Path) -> None:
    """Ask the kernel to read the whole file now (one sequential read if it is not in the page cache)."""
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


@torch.no_grad()
def fault_in(weights: list[torch.Tensor]) -> None:
    """Touch one byte per page of every mapped tensor, so the forward never takes a page fault."""
    for t in weights:
        if t.numel() == 0:
            continue
        raw = t.reshape(-1).view(torch.uint8)
        raw[::PAGE].sum()
