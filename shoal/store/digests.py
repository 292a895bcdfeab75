"""sha256 of a file, remembered per inode while the file is unchanged.

Why: every load verifies every file against its manifest, and for a 90 MB TorchScript archive
that is ~80 ms of a ~165 ms load. A model evicted and loaded again (the common case under a
memory budget) reads the same unchanged inode, so the digest computed last time still holds.
"Unchanged" means the same device, inode, size, mtime and ctime: any write, truncate, chmod or
rename-over changes ctime, which no unprivileged process can set back, so a tampered or
replaced file is always hashed again. The memo lives in this process only.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path


MAX_REMEMBERED = 65_536

_lock = threading.Lock()
_known: dict[tuple[int, int], tuple[tuple[int, int, int], str]] = {}
stats = {"hashed": 0, "remembered": 0}


def hash_file(path: Path, chunk: int = 1 << 20) -> str:
    """The file's sha256, read from disk every time (what a cache that trusts nothing else needs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def file_sha256(path: Path) -> str:
    """The file's sha256, read from disk unless this inode was hashed and has not changed since."""
    st = os.stat(path)
    key, stamp = (st.st_dev, st.st_ino), _stamp(st)
    with _lock:
        hit = _known.get(key)
        if hit is not None and hit[0] == stamp:
            stats["remembered"] += 1
            return hit[1]
    digest = hash_file(path)
    after = os.stat(path)
    with _lock:
        stats["hashed"] += 1
        if (after.st_dev, after.st_ino) == key and _stamp(after) == stamp:  # not changed while we read it
            if len(_known) >= MAX_REMEMBERED:
                _known.clear()
            _known[key] = (stamp, digest)
    return digest


def remember(path: Path, digest: str) -> None:
    """Record the digest of a file this process just wrote (and hashed while writing), so checking it
    before a push does not read it again."""
    st = os.stat(path)
    with _lock:
        if len(_known) >= MAX_REMEMBERED:
            _known.clear()
        _known[(st.st_dev, st.st_ino)] = (_stamp(st), digest)

