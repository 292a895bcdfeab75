"""Model store: ``file://`` folders (default) and ``s3://bucket/prefix``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from shoal.cache_dirs import cache_root
from shoal.errors import UsageError
from shoal.store.base import ModelStore, verify_files
from shoal.store.cache import VerifiedCache
from shoal.store.manifest import Manifest


@dataclass(frozen=True)
class StoreURI:
    """Where a store URI points: a local folder (``file``) or a bucket and prefix (``s3``)."""

    scheme: str  # file | s3
    folder: Path | None = None
    bucket: str = ""
    prefix: str = ""


def parse_store_uri(uri: str, what: str = "store URI") -> StoreURI:
    """``file://DIR``, a bare path, or ``s3://bucket/prefix``; UsageError naming ``what`` for anything else."""
    parsed = urlparse(uri if "://" in uri else "file://")
    if parsed.scheme == "file":
        return StoreURI("file", folder=Path(uri) if "://" not in uri else Path(parsed.netloc + parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise UsageError(f"{what} {uri!r} names no bucket: use s3://bucket/prefix")
        return StoreURI("s3", bucket=parsed.netloc, prefix=parsed.path)
    raise UsageError(f"{what} {uri!r}: scheme must be file:// or s3://")


def open_store(uri: str, *, cache_dir: Path | None = None, endpoint_url: str | None = None,
               region: str = "us-east-1", local_cache: bool = False, disk_budget: int | None = None) -> ModelStore:
    """Open the store a URI names: ``file://DIR``, a bare path, or ``s3://bucket/prefix``.

    S3 models are always fetched into the verified cache under ``cache_dir``; a local folder
    store uses it only with ``local_cache`` (the server: files linked in and verified once,
    trusted across restarts, instead of hashed on every first load of a process).
    """
    from shoal.store.local import LocalStore

    where = parse_store_uri(uri)
    if where.folder is not None:
        cache = None
        if local_cache:
            key = hashlib.sha256(str(where.folder.absolute()).encode()).hexdigest()[:16]
            cache = VerifiedCache((cache_dir or cache_root()) / "local" / key, disk_budget)
        return LocalStore(where.folder, cache)
    from shoal.store.s3 import S3Store

    return S3Store(where.bucket, where.prefix, cache_dir or cache_root(), endpoint_url, region, disk_budget)


def store_from_settings(settings: "object", *, server: bool = False) -> ModelStore:
    """The settings' store; ``server``: with the disk tier for local folders too, bounded by ``disk_budget``."""
    from shoal.config import Settings, parse_bytes

    assert isinstance(settings, Settings)
    budget = parse_bytes(settings.disk_budget) if settings.disk_budget else None
    return open_store(settings.store, cache_dir=settings.cache_dir, endpoint_url=settings.s3_endpoint_url,
                      region=settings.s3_region, local_cache=server, disk_budget=budget)


__all__ = ["ModelStore", "Manifest", "StoreURI", "open_store", "parse_store_uri", "store_from_settings", "verify_files"]
