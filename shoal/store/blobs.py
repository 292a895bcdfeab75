"""File contents kept once, by sha256, in a folder: the content-addressed part of a local store.

Why: thousands of fine-tunes of one base share its weights shard, graph and tokenizer byte for
byte. Keeping every file's bytes once under ``.blobs/<sha[:2]>/<sha256>`` and hard-linking model
folders to them makes N members cost the shared bytes once, while every model folder still looks
like a plain folder of files (``pull``, the loader, old tools read it unchanged).

A blob's link count is its reference count: the blob itself plus one link per model folder (or
other hard link) holding it. Adding links and deleting blobs happen under one store-wide
``fcntl.flock``, so a push that links a blob cannot race with a removal that deletes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

BLOBS = ".blobs"
LOCK = ".lock"


class BlobDir:
    """``root/.blobs``: content by sha256, and the lock that keeps its link counts honest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / BLOBS

    def path(self, sha256: str) -> Path:
        return self.dir / sha256[:2] / sha256

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes and threads (each call opens its own file description)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the description releases the lock

    def stage(self, src: Path, sha256: str) -> Path | None:
        """A temp copy of ``src`` beside the blobs, to be placed under the lock; None if
        the blob already exists (nothing to copy). Copying happens outside the lock."""
        if self.path(sha256).is_file():
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".in-", dir=self.dir)
        os.close(fd)
        tmp = Path(name)
        # a copy, not a link: a blob's link count must count store links only (an outside link, e.g. the
        # trace's build folder, would keep it alive after its last model is removed), and editing the
        # pushed folder later must not change the store
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        return tmp

    def place(self, tmp: Path | None, sha256: str) -> Path:
        """Under the lock: the blob for ``sha256``, from ``tmp`` unless one is already there."""
        blob = self.path(sha256)
        if blob.is_file():
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            return blob
        if tmp is None:
            raise FileNotFoundError(f"blob {sha256} vanished before it was linked")
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, blob)
        return blob

    def release(self, digests: set[str]) -> int:
        """Under the lock: delete the blobs among ``digests`` that nothing links any more; returns bytes freed."""
        freed = 0
        for sha in digests:
            blob = self.path(sha)
            try:
                st = blob.stat()
            except FileNotFoundError:
                continue
            if st.st_nlink <= 1:
                blob.unlink()
                freed += st.st_size
        return freed

    def sweep(self) -> int:
        """Under the lock: delete every blob no model links (e.g. after a crash between link and rename)."""
        if not self.dir.is_dir():
            return 0
        return self.release({p.name for sub in self.dir.iterdir() if sub.is_dir() for p in sub.iterdir()
                             if not p.name.startswith(".")})

    def digests(self) -> set[str]:
        if not self.dir.is_dir():
            return set()
        return {p.name for sub in self.dir.iterdir() if sub.is_dir() for p in sub.iterdir()
                if not p.name.startswith(".")}
