"""A model store in a local folder (the default, ``file://./store``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from shoal.errors import IntegrityError, StoreError
from shoal.ids import check_model_id, is_valid_model_id
from shoal.store.base import MANIFEST_NAME, ModelStore, check_listed, manifest_bytes, verify_files
from shoal.store.cache import VerifiedCache, link_or_copy
from shoal.store.manifest import Manifest


class LocalStore(ModelStore):
    def __init__(self, root: Path, cache: VerifiedCache | None = None) -> None:
        self.root = root
        self.uri = f"file://{root}"
        self.cache = cache  # the server's disk tier: files linked in, verified once, trusted across restarts

    def _dir(self, model_id: str) -> Path:
        return self.root / check_model_id(model_id)

    def list_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if is_valid_model_id(p.name) and (p / MANIFEST_NAME).is_file()
        )

    def _read_manifest_bytes(self, model_id: str) -> bytes:
        try:
            return (self._dir(model_id) / MANIFEST_NAME).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"model {model_id!r} is not in {self.uri} (see `shoal models list`)") from None

    def push(self, src_dir: Path, manifest: Manifest) -> None:
        """Stage into a hidden temp folder, verify, then swap it in with renames."""
        final = self._dir(manifest.id)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{manifest.id}.", dir=self.root))
        staging.chmod(0o755)
        try:
            for name in manifest.files:
                src = src_dir / name
                dst = staging / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)  # same filesystem: no copy
                except OSError:
                    shutil.copyfile(src, dst)
            verify_files(staging, manifest)
            (staging / MANIFEST_NAME).write_bytes(manifest_bytes(manifest))
            if final.exists():
                old = final.with_name(f".{manifest.id}.old-{os.getpid()}")
                final.rename(old)
                staging.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                staging.rename(final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def fetch(self, model_id: str) -> Path:
        folder = self._dir(model_id)
        manifest = self.read_manifest(model_id)
        check_listed(manifest)
        if self.cache is None:
            verify_files(folder, manifest)
            return folder

        def fill(name: str, tmp: Path) -> None:
            if not (folder / name).is_file():
                raise IntegrityError(f"{model_id}: file {name} is missing from {self.uri}")
            link_or_copy(folder / name, tmp)

        return self.cache.ensure(manifest, fill)

    def remove(self, model_id: str) -> None:
        folder = self._dir(model_id)
        if not (folder / MANIFEST_NAME).is_file():
            raise StoreError(f"model {model_id!r} is not in {self.uri}")
        (folder / MANIFEST_NAME).unlink()
        shutil.rmtree(folder, ignore_errors=True)
