"""A model store in S3 or an S3-compatible server, with a verified local cache.

Each file's content is one object ``.blobs/<sha256>``, written once whoever pushes it, with a marker
``.refs/<sha256>/<model id>`` per model that uses it; a model's prefix holds only its manifest, which
lists its files by sha256. A blob is deleted when the removal of a model leaves it no marker. Models
pushed before blobs existed (files under their prefix) are still read and removed.

Downloads land in a temp file in the cache and are renamed into place only after
their sha256 matches, so a crash never leaves a half file that looks complete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from shoal.errors import IntegrityError, StoreError
from shoal.ids import check_model_id, is_valid_model_id
from shoal.store.base import MANIFEST_NAME, ModelStore, check_listed, manifest_bytes, verify_files
from shoal.store.blobs import BLOBS
from shoal.store.cache import VerifiedCache
from shoal.store.manifest import Manifest
from shoal.store.s3_client import s3_call, s3_client

REFS = ".refs"


class S3Store(ModelStore):
    def __init__(self, bucket: str, prefix: str, cache_dir: Path, endpoint_url: str | None, region: str,
                 disk_budget: int | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.cache_dir = cache_dir / bucket / (self.prefix or "_")
        self.cache = VerifiedCache(self.cache_dir, disk_budget)
        self.client = s3_client(endpoint_url, region)

    def _key(self, model_id: str, name: str) -> str:
        parts = [self.prefix, check_model_id(model_id), name]
        return "/".join(p for p in parts if p)

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        """One S3 call (``s3_client.s3_call``); a missing key stays botocore's ClientError, read as absent."""
        return s3_call(self.uri, what, fn, keep_missing=True, **kwargs)

    def check(self) -> None:
        """One cheap request: StoreUnavailable while the endpoint cannot be reached."""
        base = f"{self.prefix}/" if self.prefix else ""
        self._call("reaching the store", self.client.list_objects_v2, Bucket=self.bucket, Prefix=base, MaxKeys=1)

    def list_ids(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        ids: set[str] = set()
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base, "Delimiter": "/"}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("listing models", self.client.list_objects_v2, **kwargs)
            for cp in page.get("CommonPrefixes", []):
                name = cp["Prefix"][len(base):].rstrip("/")
                if is_valid_model_id(name):
                    ids.add(name)
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]
        return sorted(i for i in ids if self._has_manifest(i))

    def _has_manifest(self, model_id: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._call("checking a manifest", self.client.head_object, Bucket=self.bucket,
                       Key=self._key(model_id, MANIFEST_NAME))
        except ClientError:
            return False
        return True

    def _read_manifest_bytes(self, model_id: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            obj = self._call("reading a manifest", self.client.get_object, Bucket=self.bucket,
                             Key=self._key(model_id, MANIFEST_NAME))
        except ClientError:
            raise StoreError(f"model {model_id!r} is not in {self.uri} (see `shoal models list`)") from None
        return obj["Body"].read()

    def _blob_key(self, sha256: str) -> str:
        return "/".join(p for p in (self.prefix, BLOBS, sha256) if p)

    def _ref_key(self, sha256: str, model_id: str = "") -> str:
        return "/".join(p for p in (self.prefix, REFS, sha256, model_id) if p) + ("" if model_id else "/")

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._call("checking an object", self.client.head_object, Bucket=self.bucket, Key=key)
        except ClientError:
            return False
        return True

    def push(self, src_dir: Path, manifest: Manifest) -> None:
        """Each content once under ``.blobs/<sha256>`` (skipped when already there), a marker per user under
        ``.refs/<sha256>/<id>``, the manifest last. The marker goes first, so a concurrent removal of another
        user sees it before deciding the blob is unused; the blobs are checked again once the manifest is
        written and any that such a removal deleted in between is uploaded again."""
        verify_files(src_dir, manifest)
        try:
            old = {e.sha256 for e in self.read_manifest(manifest.id).files.values()}  # a re-push: its version
        except StoreError:
            old = set()
        first = {e.sha256: name for name, e in reversed(list(manifest.files.items()))}
        for sha in first:
            self._call(f"marking {manifest.id} as a user of {sha[:16]}", self.client.put_object,
                       Bucket=self.bucket, Key=self._ref_key(sha, manifest.id), Body=b"")
        for sha, name in first.items():
            if not self._exists(self._blob_key(sha)):
                self._upload(src_dir / name, sha, manifest.id, name)
        self._call(f"writing the manifest of {manifest.id}", self.client.put_object, Bucket=self.bucket,
                   Key=self._key(manifest.id, MANIFEST_NAME), Body=manifest_bytes(manifest))
        for sha, name in first.items():
            if not self._exists(self._blob_key(sha)):
                self._upload(src_dir / name, sha, manifest.id, name)
        self._release(manifest.id, old - set(first))  # contents only the replaced version used

    def _upload(self, path: Path, sha256: str, model_id: str, name: str) -> None:
        self._call(f"uploading {model_id}/{name}", self.client.upload_file, Filename=str(path),
                   Bucket=self.bucket, Key=self._blob_key(sha256))

    def fetch(self, model_id: str) -> Path:
        """The model's files in the local cache: downloaded (temp file, sha256, rename) unless already verified.

        A file is read from its blob, or from under the model's prefix where a model pushed before blobs
        existed keeps it."""
        from botocore.exceptions import ClientError

        manifest = self.read_manifest(model_id)
        check_listed(manifest)

        def fill(name: str, tmp: Path) -> None:
            what = f"downloading {model_id}/{name}"
            try:
                self._call(what, self.client.download_file, Bucket=self.bucket,
                           Key=self._blob_key(manifest.files[name].sha256), Filename=str(tmp))
                return
            except ClientError:
                pass
            try:
                self._call(what, self.client.download_file, Bucket=self.bucket, Key=self._key(model_id, name),
                           Filename=str(tmp))
            except ClientError:
                raise IntegrityError(f"{model_id}: file {name} (sha256 {manifest.files[name].sha256[:16]}...) "
                                     f"is missing from {self.uri}") from None

        return self.cache.ensure(manifest, fill)

    def remove(self, model_id: str) -> None:
        """The manifest first (a half-removed model is never listed), then its markers, then each blob no
        model marks any more; files of an old-layout model under its prefix go too."""
        manifest = self.read_manifest(model_id)
        self._call("removing a manifest", self.client.delete_object, Bucket=self.bucket,
                   Key=self._key(model_id, MANIFEST_NAME))
        for name in manifest.files:  # the old layout (a no-op for a model pushed as blobs)
            self._call(f"removing {model_id}/{name}", self.client.delete_object, Bucket=self.bucket,
                       Key=self._key(model_id, name))
        self._release(model_id, {e.sha256 for e in manifest.files.values()})

    def _release(self, model_id: str, digests: set[str]) -> None:
        """Drop ``model_id``'s marks on ``digests``, then every blob among them no model marks any more."""
        for sha in digests:
            self._call(f"removing {model_id}'s mark on {sha[:16]}", self.client.delete_object, Bucket=self.bucket,
                       Key=self._ref_key(sha, model_id))
        for sha in digests:
            users = self._call("listing a blob's users", self.client.list_objects_v2, Bucket=self.bucket,
                               Prefix=self._ref_key(sha), MaxKeys=1)
            if not users.get("KeyCount") and not users.get("Contents"):
                self._call(f"removing blob {sha[:16]}", self.client.delete_object, Bucket=self.bucket,
                           Key=self._blob_key(sha))

    def blob_digests(self) -> set[str]:
        """sha256 of every blob in the store (tests, benchmarks)."""
        base = "/".join(p for p in (self.prefix, BLOBS) if p) + "/"
        out: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            out.update(obj["Key"][len(base):] for obj in page.get("Contents", []))
        return out
