"""The model store interface: a folder per model holding its files and ``shoal.json``."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

from pydantic import ValidationError

from shoal.errors import IntegrityError, StoreError, StoreUnavailable
from shoal.ids import check_model_id
from shoal.store.digests import file_sha256
from shoal.store.manifest import MANIFEST_NAME, Manifest


class ModelStore(ABC):
    """Where traced models live. The manifest is written last: its presence means complete."""

    uri: str

    @abstractmethod
    def list_ids(self) -> list[str]:
        """Ids of every complete model (one with a manifest), sorted."""

    @abstractmethod
    def _read_manifest_bytes(self, model_id: str) -> bytes:
        """Raw manifest; raise StoreError if the model is absent."""

    @abstractmethod
    def push(self, src_dir: Path, manifest: Manifest) -> None:
        """Copy the manifest's files from ``src_dir`` into the store, manifest last."""

    @abstractmethod
    def fetch(self, model_id: str) -> Path:
        """A local folder holding the model's files, each verified against its sha256."""

    @abstractmethod
    def remove(self, model_id: str) -> None:
        """Delete the model (manifest first, so a half-deleted model is never listed)."""

    def read_manifest(self, model_id: str) -> Manifest:
        check_model_id(model_id)
        raw = self._read_manifest_bytes(model_id)
        try:
            return Manifest.model_validate(json.loads(raw))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise StoreError(f"manifest of {model_id} in {self.uri} is corrupt: {str(exc).splitlines()[0]}") from None

    def check(self) -> None:
        """Raise StoreUnavailable if the store cannot be reached now (a local folder always can)."""

    def exists(self, model_id: str) -> bool:
        try:
            self.read_manifest(model_id)
        except StoreUnavailable:
            raise  # unknown, not absent: the caller answers 503, not 404
        except StoreError:
            return False
        return True

    def manifests(self) -> list[Manifest]:
        return [self.read_manifest(i) for i in self.list_ids()]


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Raise IntegrityError unless every file in the manifest is present with its sha256."""
    for name in manifest.files:
        verify_file(folder, manifest, name)


def verify_file(folder: Path, manifest: Manifest, name: str) -> None:
    entry = manifest.files[name]
    path = folder / name
    if not path.is_file():
        raise IntegrityError(f"{manifest.id}: file {name} is missing from {folder}")
    if path.stat().st_size != entry.size or file_sha256(path) != entry.sha256:
        raise IntegrityError(f"{manifest.id}: file {name} does not match the sha256 in its manifest")


def check_listed(manifest: Manifest) -> None:
    """The files the server loads (artifact, tokenizer, weights) must be listed, so their sha256 is checked too."""
    tensor_files = {t.file for t in manifest.tensors.values()}
    for name in (manifest.artifact, manifest.tokenizer, manifest.weights, manifest.family_graph, *sorted(tensor_files)):
        if name and name not in manifest.files:
            raise IntegrityError(f"{manifest.id}: {name} has no sha256 in its manifest: refused")


def manifest_bytes(manifest: Manifest) -> bytes:
    return manifest.model_dump_json(indent=2).encode()


__all__ = ["ModelStore", "verify_files", "verify_file", "check_listed", "manifest_bytes", "MANIFEST_NAME"]
