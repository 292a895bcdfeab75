"""Payloads and results as objects under one root: a local folder or an S3 prefix.

Why not the model store: models are folders with a manifest; jobs are single objects
written by many processes at once. Writes are atomic either way, so a crash never
leaves a half object under its final name: a temp file renamed into place locally, a
multipart upload completed only at the end on S3. Large payloads stream through a
writer in parts, never held whole in memory. S3 access itself, the client and botocore
errors as StoreError or StoreUnavailable, is the store's (``shoal/store/s3_client.py``).
"""

from __future__ import annotations

import itertools
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from shoal.errors import StoreError, UsageError
from shoal.store import parse_store_uri
from shoal.store.s3_client import s3_call, s3_client

PART_BYTES = 8 * 1024 * 1024  # S3 multipart part size (the minimum is 5 MiB)
POOL_CONNECTIONS = 32  # the job store's S3 connection pool (the model store keeps botocore's 10)


class ObjectWriter(ABC):
    """A streamed write: ``write`` parts, then ``commit`` (atomic) or ``abort``."""

    size = 0

    @abstractmethod
    def write(self, chunk: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> str:
        """Make the object visible under its final name; returns its location (URI)."""

    @abstractmethod
    def abort(self) -> None: ...


class Objects(ABC):
    """Objects under one root URI, addressed by relative keys like ``results/m/JOB.json``."""

    uri: str

    def location(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    def key_of(self, location: str) -> str | None:
        """The key of ``location`` if it lies under this root, else None."""
        base = self.uri.rstrip("/") + "/"
        if not location.startswith(base):
            return None
        key = location[len(base):]
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            return None
        return key

    @abstractmethod
    def writer(self, key: str) -> ObjectWriter: ...

    def put(self, key: str, data: bytes) -> str:
        w = self.writer(key)
        try:
            w.write(data)
            return w.commit()
        except BaseException:
            w.abort()
            raise

    @abstractmethod
    def get(self, key: str, limit: int | None = None) -> bytes:
        """The object's bytes; StoreError if absent, unreadable, or longer than ``limit``."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Its size in bytes; StoreError if it cannot be read."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove it; absent is fine (deletes repeat after crashes)."""

    @abstractmethod
    def keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (complete objects only), sorted."""


# -- local folder --
_SEQ = itertools.count()


class _FileWriter(ObjectWriter):
    def __init__(self, final: Path, location: str, made: set[Path]) -> None:
        if final.parent not in made:  # one mkdir per folder per process, not per object
            final.parent.mkdir(parents=True, exist_ok=True)
            made.add(final.parent)
        # a name no other writer uses (pid + counter), created exclusively; no mkstemp randomness needed
        self.final, self.loc = final, location
        self.tmp = final.with_name(f".{final.name}.{os.getpid()}-{next(_SEQ)}.part")
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view):]
        self.size += len(chunk)

    def commit(self) -> str:
        os.close(self.fd)
        self.fd = -1
        os.replace(self.tmp, self.final)  # atomic: readers see the old object or the whole new one
        return self.loc

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.tmp.unlink(missing_ok=True)


class LocalObjects(Objects):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.uri = f"file://{self.root}"
        self._made: set[Path] = set()

    def _path(self, key: str) -> Path:
        """Checked by its text (no resolve(): that is one lstat per path component, per object)."""
        parts = key.split("/")
        if not key or "\0" in key or any(p in ("", ".", "..") for p in parts):
            raise UsageError(f"object key {key!r} escapes {self.uri}")
        return self.root.joinpath(*parts)

    def writer(self, key: str) -> ObjectWriter:
        return _FileWriter(self._path(key), self.location(key), self._made)

    def get(self, key: str, limit: int | None = None) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb", buffering=0) as f:
                if limit is not None and os.fstat(f.fileno()).st_size > limit:
                    raise StoreError(f"{self.location(key)} is larger than {limit} bytes")
                return f.read()  # sized from fstat: no buffer of ``limit`` bytes is allocated
        except OSError as exc:
            raise StoreError(f"cannot read {self.location(key)}: {exc.strerror or exc}") from None

    def size(self, key: str) -> int:
        path = self._path(key)
        try:
            if not path.is_file() or not os.access(path, os.R_OK):
                raise StoreError(f"{self.location(key)} is not a readable file")
            return path.stat().st_size
        except OSError as exc:
            raise StoreError(f"cannot read {self.location(key)}: {exc.strerror or exc}") from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith("."))


# -- S3 --
class _S3Writer(ObjectWriter):
    """Small objects: one PUT at commit. Past one part: a multipart upload, completed at commit."""

    def __init__(self, store: "S3Objects", key: str) -> None:
        self.s3, self.key, self.full = store, key, store.full_key(key)
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def write(self, chunk: bytes) -> None:
        self.buffer += chunk
        self.size += len(chunk)
        while len(self.buffer) >= PART_BYTES:
            self._part(bytes(self.buffer[:PART_BYTES]))
            del self.buffer[:PART_BYTES]

    def _part(self, data: bytes) -> None:
        c = self.s3.client
        if self.upload_id is None:
            self.upload_id = self.s3.call("starting an upload", c.create_multipart_upload,
                                          Bucket=self.s3.bucket, Key=self.full)["UploadId"]
        n = len(self.parts) + 1
        out = self.s3.call("uploading a part", c.upload_part, Bucket=self.s3.bucket, Key=self.full,
                           UploadId=self.upload_id, PartNumber=n, Body=data)
        self.parts.append({"PartNumber": n, "ETag": out["ETag"]})

    def commit(self) -> str:
        c = self.s3.client
        if self.upload_id is None:
            self.s3.call("writing an object", c.put_object, Bucket=self.s3.bucket, Key=self.full,
                         Body=bytes(self.buffer))
        else:
            if self.buffer:
                self._part(bytes(self.buffer))
            self.s3.call("completing an upload", c.complete_multipart_upload, Bucket=self.s3.bucket,
                         Key=self.full, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts})
        self.buffer = bytearray()
        return self.s3.location(self.key)

    def abort(self) -> None:
        self.buffer = bytearray()
        if self.upload_id is not None:
            try:
                self.s3.client.abort_multipart_upload(Bucket=self.s3.bucket, Key=self.full,
                                                      UploadId=self.upload_id)
            except Exception:  # best effort: a bucket lifecycle rule reaps stale uploads
                pass


class S3Objects(Objects):
    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket, self.prefix, self.client = bucket, prefix.strip("/"), client
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        """One S3 call through the store's S3 layer: a down endpoint is StoreUnavailable, the rest StoreError."""
        return s3_call(self.uri, what, fn, **kwargs)

    def writer(self, key: str) -> ObjectWriter:
        return _S3Writer(self, key)

    def get(self, key: str, limit: int | None = None) -> bytes:
        if limit is not None and self.size(key) > limit:
            raise StoreError(f"{self.location(key)} is larger than {limit} bytes")
        obj = self.call(f"reading {key}", self.client.get_object, Bucket=self.bucket, Key=self.full_key(key))
        return obj["Body"].read()

    def size(self, key: str) -> int:
        head = self.call(f"reading {key}", self.client.head_object, Bucket=self.bucket, Key=self.full_key(key))
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self.call(f"deleting {key}", self.client.delete_object, Bucket=self.bucket, Key=self.full_key(key))

    def keys(self, prefix: str) -> list[str]:
        base = self.full_key(prefix)
        out: list[str] = []
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base}
            if token:
                kw["ContinuationToken"] = token
            page = self.call("listing objects", self.client.list_objects_v2, **kw)
            cut = len(self.prefix) + 1 if self.prefix else 0
            out.extend(o["Key"][cut:] for o in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return sorted(out)
            token = page["NextContinuationToken"]


class Locations:
    """Opens the job root and resolves any ``input_location`` a client names.

    ``file://`` inputs must lie under the job root (a client must not make the server read
    its own files); ``s3://`` inputs may name any bucket the server's credentials reach.
    """

    def __init__(self, root_uri: str, endpoint_url: str | None = None, region: str = "us-east-1") -> None:
        self.endpoint_url, self.region = endpoint_url, region
        self._client: Any = None
        self.root = self._open(root_uri)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.endpoint_url, self.region, max_pool_connections=POOL_CONNECTIONS)
        return self._client

    def _open(self, uri: str) -> Objects:
        where = parse_store_uri(uri, "job store URI")
        if where.folder is not None:
            return LocalObjects(where.folder)
        return S3Objects(where.bucket, where.prefix, self.client)

    def resolve(self, location: str) -> tuple[Objects, str]:
        """(objects, key) for a location; UsageError naming what is wrong with it."""
        key = self.root.key_of(location)
        if key is not None:
            return self.root, key
        p = urlparse(location)
        if p.scheme == "s3":
            key = p.path.lstrip("/")
            if not p.netloc or not key:
                raise UsageError(f"input_location {location!r}: use s3://bucket/key")
            return S3Objects(p.netloc, "", self.client), key
        if p.scheme == "file":
            raise UsageError(f"input_location {location!r}: file:// inputs must lie under {self.root.uri}")
        raise UsageError(f"input_location {location[:200]!r}: use s3://bucket/key or file://PATH")

    def read(self, location: str, limit: int | None = None) -> bytes:
        objects, key = self.resolve(location)
        return objects.get(key, limit)

    def size(self, location: str) -> int:
        objects, key = self.resolve(location)
        return objects.size(key)

    def delete(self, location: str) -> None:
        objects, key = self.resolve(location)
        objects.delete(key)
