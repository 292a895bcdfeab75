"""Swap a model in: bind its memory-mapped weights to the shared graph of its architecture.

The loader thread does all the work a swap-in costs, so the first request's forward
on an executor runs at steady speed: the weights file's pages are faulted in here
(one byte per page), not during the forward.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from shoal.graphs import BoundGraph, graph_weights
from shoal.server.handlers.base import LoadContext
from shoal.store.manifest import Manifest

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


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
