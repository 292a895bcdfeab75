"""Model store: ``file://`` folders (default) and ``s3://bucket/prefix``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from shoal.errors import UsageError
from shoal.store.base import ModelStore, verify_files
from shoal.store.manifest import Manifest


def open_store(uri: str, *, cache_dir: Path | None = None, endpoint_url: str | None = None,
               region: str = "us-east-1") -> ModelStore:
    """Open the store a URI names: ``file://DIR``, a bare path, or ``s3://bucket/prefix``."""
    from shoal.store.local import LocalStore

    if "://" not in uri:
        return LocalStore(Path(uri))
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.netloc + parsed.path) if parsed.netloc else Path(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise UsageError(f"store URI {uri!r} names no bucket: use s3://bucket/prefix")
        from shoal.store.s3 import S3Store

        return S3Store(parsed.netloc, parsed.path, cache_dir or Path(".shoal/cache"), endpoint_url, region)
    raise UsageError(f"store URI {uri!r}: scheme must be file:// or s3://")


def store_from_settings(settings: "object") -> ModelStore:
    from shoal.config import Settings

    assert isinstance(settings, Settings)
    return open_store(settings.store, cache_dir=settings.cache_dir, endpoint_url=settings.s3_endpoint_url,
                      region=settings.s3_region)


__all__ = ["ModelStore", "Manifest", "open_store", "store_from_settings", "verify_files"]
