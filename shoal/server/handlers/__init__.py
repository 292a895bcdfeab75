"""Handlers per model kind: ``shoal.server.handlers.<kind>`` exposes ``create(manifest, folder, ctx)``
and ``v2_metadata(manifest)``.

Adding a kind (``detector``, ``tensor``) is one module here; the registry finds it by the
manifest's ``kind`` and nothing else changes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from shoal.server.handlers.base import Handler, LoadContext
from shoal.store.manifest import Manifest


def _module(kind: str) -> ModuleType:
    try:
        return importlib.import_module(f"{__name__}.{kind}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{kind}":
            raise RuntimeError(f"this server has no handler for model kind {kind!r}") from None
        raise


def create_handler(manifest: Manifest, folder: Path, ctx: LoadContext) -> Handler:
    """Load ``manifest``'s artifact from ``folder`` with the handler module of its kind."""
    handler: Handler = _module(manifest.kind).create(manifest, folder, ctx)
    return handler


def v2_metadata(manifest: Manifest) -> dict[str, Any]:
    """KServe v2 ``inputs``/``outputs`` of a model, from its manifest (the module's ``v2_metadata``)."""
    fn = getattr(_module(manifest.kind), "v2_metadata", None)
    return fn(manifest) if fn else {"inputs": [], "outputs": []}


__all__ = ["Handler", "LoadContext", "create_handler", "v2_metadata"]
