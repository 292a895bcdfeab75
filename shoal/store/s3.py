"""A model store in S3 or an S3-compatible server, with a verified local cache.

Downloads land in a temp file in the cache and are renamed into place only after
their sha256 matches, so a crash never leaves a half file that looks complete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from shoal.errors import StoreError, StoreUnavailable
from shoal.ids import check_model_id, is_valid_model_id
from shoal.store.base import MANIFEST_NAME, ModelStore, check_listed, manifest_bytes, verify_files
from shoal.store.digests import file_sha256
from shoal.store.cache import VerifiedCache
from shoal.store.manifest import Manifest


class S3Store(ModelStore):
    def __init__(self, bucket: str, prefix: str, cache_dir: Path, endpoint_url: str | None, region: str,
                 disk_budget: int | None = None) -> None:
        import boto3.session
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.cache_dir = cache_dir / bucket / (self.prefix or "_")
        self.cache = VerifiedCache(self.cache_dir, disk_budget)
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A fresh session per store: the default session caches credentials across stores.
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region,
                                                     config=config)

    def _key(self, model_id: str, name: str) -> str:
        parts = [self.prefix, check_model_id(model_id), name]
        return "/".join(p for p in parts if p)

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        """Run one S3 call, turning every botocore failure into one clear StoreError line."""
        from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            if code in ("NoSuchKey", "404"):
                raise
            if code in ("InternalError", "ServiceUnavailable", "SlowDown", "500", "502", "503", "504"):
                raise StoreUnavailable(f"{what} in {self.uri} failed: {code} (the store is unavailable)") from None
            hint = " (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)" if code in (
                "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") else ""
            raise StoreError(f"{what} in {self.uri} failed: {code}{hint}") from None
        except (BotoConnectionError, HTTPClientError) as exc:
            raise StoreUnavailable(f"{what} in {self.uri} failed: {exc}") from None
        except BotoCoreError as exc:
            raise StoreError(f"{what} in {self.uri} failed: {exc}") from None

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

    def push(self, src_dir: Path, manifest: Manifest) -> None:
        verify_files(src_dir, manifest)
        for name in manifest.files:
            self._call(f"uploading {manifest.id}/{name}", self.client.upload_file,
                       Filename=str(src_dir / name), Bucket=self.bucket, Key=self._key(manifest.id, name))
        self._call(f"writing the manifest of {manifest.id}", self.client.put_object, Bucket=self.bucket,
                   Key=self._key(manifest.id, MANIFEST_NAME), Body=manifest_bytes(manifest))

    def fetch(self, model_id: str) -> Path:
        """The model's files in the local cache: downloaded (temp file, sha256, rename) unless already verified."""
        manifest = self.read_manifest(model_id)
        check_listed(manifest)

        def fill(name: str, tmp: Path) -> None:
            self._call(f"downloading {model_id}/{name}", self.client.download_file,
                       Bucket=self.bucket, Key=self._key(model_id, name), Filename=str(tmp))

        return self.cache.ensure(manifest, fill)

    def remove(self, model_id: str) -> None:
        manifest = self.read_manifest(model_id)
        self._call("removing a manifest", self.client.delete_object, Bucket=self.bucket,
                   Key=self._key(model_id, MANIFEST_NAME))
        for name in manifest.files:
            self._call(f"removing {model_id}/{name}", self.client.delete_object, Bucket=self.bucket,
                       Key=self._key(model_id, name))
