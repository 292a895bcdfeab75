"""A model store in a local folder (the default, ``file://./store``).

File contents live once under ``.blobs/`` (``shoal/store/blobs.py``); a model folder is hard links to
them plus its manifest, so members of a family that share the base's files cost its bytes once.
Folders written before blobs existed (plain files) are still read, replaced and removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from shoal.errors import IntegrityError, StoreError
from shoal.ids import check_model_id, is_valid_model_id
from shoal.store.base import MANIFEST_NAME, ModelStore, check_listed, manifest_bytes, verify_file, verify_files
from shoal.store.blobs import BlobDir
from shoal.store.cache import VerifiedCache, link_or_copy
from shoal.store.manifest import Manifest


class LocalStore(ModelStore):
    def __init__(self, root: Path, cache: VerifiedCache | None = None) -> None:
        self.root = root
        self.uri = f"file://{root}"
        self.cache = cache  # the server's disk tier: files linked in, verified once, trusted across restarts
        self.blobs = BlobDir(root)

    def _dir(self, model_id: str) -> Path:
        return self.root / check_model_id(model_id)

    def list_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(  # dot-folders (.blobs, staging) are never models: ids cannot start with a dot
            p.name for p in self.root.iterdir() if is_valid_model_id(p.name) and (p / MANIFEST_NAME).is_file()
        )

    def _read_manifest_bytes(self, model_id: str) -> bytes:
        try:
            return (self._dir(model_id) / MANIFEST_NAME).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"model {model_id!r} is not in {self.uri} (see `shoal models list`)") from None

    def push(self, src_dir: Path, manifest: Manifest) -> None:
        """Verify the files, store each content once as a blob, link the model folder to them, swap it in."""
        final = self._dir(manifest.id)
        self.root.mkdir(parents=True, exist_ok=True)
        self._verify_source(src_dir, manifest)
        first = {e.sha256: name for name, e in reversed(list(manifest.files.items()))}  # one copy per content
        staged = {sha: self.blobs.stage(src_dir / name, sha) for sha, name in first.items()}
        staging = Path(tempfile.mkdtemp(prefix=f".{manifest.id}.", dir=self.root))
        staging.chmod(0o755)
        old: Path | None = None
        try:
            with self.blobs.locked():
                for name, entry in manifest.files.items():
                    tmp = staged.pop(entry.sha256, None)
                    if tmp is None and not self.blobs.path(entry.sha256).is_file():
                        tmp = self.blobs.stage(src_dir / name, entry.sha256)  # removed since: stage it again
                    dst = staging / name
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.link(self.blobs.place(tmp, entry.sha256), dst)
                (staging / MANIFEST_NAME).write_bytes(manifest_bytes(manifest))
                if final.exists():
                    old = final.with_name(f".{manifest.id}.old-{os.getpid()}")
                    final.rename(old)
                staging.rename(final)
                if old is not None:
                    self._drop(old)
        finally:
            for tmp in staged.values():
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _verify_source(self, src_dir: Path, manifest: Manifest) -> None:
        """Every file against its sha256, except one that is this store's own blob for it (a member staged
        from links to its base's files): that was checked when it entered, and is on every fetch. Hashing
        it again per member would cost the base's 90 MB per synthesized member."""
        for name, entry in manifest.files.items():
            try:
                st, blob = (src_dir / name).stat(), self.blobs.path(entry.sha256).stat()
            except FileNotFoundError:
                st = blob = None
            if st is not None and blob is not None and (st.st_dev, st.st_ino) == (blob.st_dev, blob.st_ino):
                continue
            verify_file(src_dir, manifest, name)

    def _drop(self, folder: Path) -> None:
        """Under the lock: delete a model folder, then the blobs only it linked."""
        digests = _digests(folder)
        shutil.rmtree(folder, ignore_errors=True)
        self.blobs.release(digests)

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
        with self.blobs.locked():
            if not (folder / MANIFEST_NAME).is_file():
                raise StoreError(f"model {model_id!r} is not in {self.uri}")
            digests = _digests(folder)
            (folder / MANIFEST_NAME).unlink()  # first: a half-removed model is never listed
            shutil.rmtree(folder, ignore_errors=True)
            self.blobs.release(digests)

    def collect(self) -> int:
        """Delete blobs no model links any more (e.g. once a server's disk tier let go of its links)."""
        with self.blobs.locked():
            return self.blobs.sweep()


def _digests(folder: Path) -> set[str]:
    """The sha256 of every file the folder's manifest lists (none if it has no readable manifest)."""
    try:
        manifest = Manifest.model_validate_json((folder / MANIFEST_NAME).read_bytes())
    except (FileNotFoundError, ValueError):
        return set()
    return {e.sha256 for e in manifest.files.values()}
