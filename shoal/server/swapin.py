"""Swap a model in: bind its memory-mapped weights to the shared graph of its architecture.

The loader thread does all the work a swap-in costs, so the first request's forward
on an executor runs at steady speed: the weights file's pages are faulted in here
(one byte per page), not during the forward.
"""

from __future__ import annotations

from pathlib import Path

from shoal.graphs import BoundGraph, fault_in, graph_weights, read_ahead
from shoal.server.handlers.base import LoadContext
from shoal.store.manifest import Manifest


def bind_weights(manifest: Manifest, folder: Path, ctx: LoadContext) -> BoundGraph:
    """The model's weights under the shared graph named by its manifest (loaded once per process)."""
    assert manifest.weights is not None
    graph_entry = manifest.files[manifest.artifact]
    graph, names = ctx.graphs.get(graph_entry.sha256, folder / manifest.artifact, ctx.torch_device)
    files = {t.file for t in manifest.tensors.values()} or {manifest.weights}
    for name in sorted(files):  # the member's own file and the base's shared shard alike
        read_ahead(folder / name)
    weights = graph_weights(folder, manifest, names, ctx.torch_device)
    if ctx.torch_device == "cpu":
        fault_in(weights)
    return BoundGraph(graph, weights)
