"""Handlers per model kind: a kind is one module exposing ``create(manifest, folder, ctx) -> Handler``
and ``CODEC`` (its ``shoal.server.codecs.base.Codec`` class, for metadata without a load).

The registry finds the module by the manifest's ``kind``: ``shoal.server.handlers.<kind>``, or a
module registered for it with ``register_kind`` (a plugin or a test adds a kind without editing
shoal). Execution lives in the handler, protocol conversion in the codec.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from shoal.server.handlers.base import Handler, LoadContext
from shoal.store.manifest import Manifest

_REGISTERED: dict[str, ModuleType] = {}


def register_kind(kind: str, module: ModuleType) -> None:
    """Serve models of ``kind`` with ``module`` (``create`` and ``CODEC``), ahead of any built-in module."""
    for name in ("create", "CODEC"):
        if not hasattr(module, name):
            raise TypeError(f"handler module {module.__name__} for kind {kind!r} has no {name}")
    _REGISTERED[kind] = module


def unregister_kind(kind: str) -> None:
    _REGISTERED.pop(kind, None)


def _module(kind: str) -> ModuleType:
    if kind in _REGISTERED:
        return _REGISTERED[kind]
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
    """KServe v2 ``inputs``/``outputs`` of a model, from its manifest (its kind's codec)."""
    codec = getattr(_module(manifest.kind), "CODEC", None)
    return codec.v2_metadata(manifest) if codec else {"inputs": [], "outputs": []}


__all__ = ["Handler", "LoadContext", "create_handler", "register_kind", "unregister_kind", "v2_metadata"]
