"""The local disk tier between the store and memory: verified file contents, once each, trusted across restarts.

Why: a swap-in must cost what mapping the weights costs, so the sha256 of a file is checked once,
when it enters this cache, not on every load; and members of a family share the base's files, so
the tier keeps each content once. Contents live under ``.blobs/<sha[:2]>/<sha256>`` with a stamp
beside each (``<sha256>.ok``: inode, size, mtime, ctime after the check); a model's folder holds
symlinks to its blobs, its manifest and its own stamps (``.verified.json``, name -> sha256 + stat),
so a fetch of a verified model costs a ``stat`` per file. Any write, truncate, chmod or rename-over
changes ctime (which no unprivileged process can set back), so a tampered blob is hashed again,
found wrong and fetched anew: never served.

Blobs enter through a temp file renamed into place. From a local folder store they are hard links to
the store's own blobs (no copy, no disk), from S3 downloads. ``budget_bytes`` bounds the bytes only
this cache holds (blobs whose link count is 1), each counted once however many models link it; the
least recently fetched model folders not in ``pinned`` go first, and a blob goes only with the last
folder that links it, never while a pinned model or a running fetch uses it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from shoal.errors import IntegrityError
from shoal.store.blobs import BLOBS
from shoal.store.digests import hash_file
from shoal.store.manifest import MANIFEST_NAME, Manifest

STAMPS = ".verified.json"
ORPHAN_AGE_S = 3600.0  # a blob no folder links is deleted after this long (another process may be filling it)
Fill = Callable[[str, Path], None]  # (file name in the model, temp path to write) -> None


class VerifiedCache:
    def __init__(self, root: Path, budget_bytes: int | None = None) -> None:
        self.root = root
        self.blobs = root / BLOBS
        self.budget = budget_bytes
        self.pinned: Callable[[], set[str]] = set  # model ids that must stay (resident, loading)
        self._lock = threading.Lock()
        self._active: Counter[str] = Counter()  # blobs a running ensure() uses: never trimmed
        self.stats = {"trusted": 0, "hashed": 0, "filled": 0, "corrupt": 0, "evicted": 0}

    def folder(self, model_id: str) -> Path:
        return self.root / model_id

    def blob(self, sha256: str) -> Path:
        return self.blobs / sha256[:2] / sha256

    def ensure(self, manifest: Manifest, fill: Fill) -> Path:
        """The model's folder with every file present and verified, filling what is missing or wrong."""
        digests = {e.sha256 for e in manifest.files.values()}
        with self._lock:
            self._active.update(digests)
        try:
            folder = self.folder(manifest.id)
            folder.mkdir(parents=True, exist_ok=True)
            stamps = _read_stamps(folder)
            changed = False
            for name, entry in manifest.files.items():
                path = folder / name
                stamp = stamps.get(name)
                if (stamp is not None and stamp[0] == entry.sha256 and path.is_symlink()
                        and _stat_key(path) == stamp[1:]):
                    self.stats["trusted"] += 1
                    continue
                changed = True
                blob = self._ensure_blob(manifest.id, name, entry.sha256, entry.size, path, fill)
                _symlink(blob, path)
                stamps[name] = [entry.sha256, *_stat_key(path)]
            if changed:
                _write_json(folder / STAMPS, stamps)
                _write_json(folder / MANIFEST_NAME, json.loads(manifest.model_dump_json()))
            os.utime(folder)  # LRU order: the newest fetch last
        finally:
            with self._lock:
                self._active.subtract(digests)
                self._active += Counter()  # drop zero counts
        if changed and self.budget is not None:
            self.trim(keep=manifest.id)
        return folder

    def _ensure_blob(self, model_id: str, name: str, sha256: str, size: int, path: Path, fill: Fill) -> Path:
        """The verified blob for ``sha256``: trusted by its stamp, hashed, moved in from an older cache's
        plain file, or filled from the store."""
        blob = self.blob(sha256)
        key = _stat_key(blob)
        if key and key[1] == size:
            if _read_blob_stamp(blob) == key:
                self.stats["trusted"] += 1
                return blob
            self.stats["hashed"] += 1
            if hash_file(blob) == sha256:
                _write_blob_stamp(blob, key)
                return blob
            self.stats["corrupt"] += 1
        elif path.is_file() and not path.is_symlink() and path.stat().st_size == size:
            self.stats["hashed"] += 1  # a plain file from before blobs: keep its bytes if they are right
            if hash_file(path) == sha256:
                blob.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, blob)
                _write_blob_stamp(blob, _stat_key(blob))
                return blob
        self._fill_blob(model_id, name, sha256, blob, fill)
        return blob

    def _fill_blob(self, model_id: str, name: str, sha256: str, blob: Path, fill: Fill) -> None:
        blob.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".in-", dir=blob.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            tmp.unlink()  # fill creates it (a hard link needs the name free)
            fill(name, tmp)
            if hash_file(tmp) != sha256:
                raise IntegrityError(f"{model_id}: {name} from the store does not match the sha256 in its manifest")
            os.replace(tmp, blob)
            _write_blob_stamp(blob, _stat_key(blob))
            self.stats["filled"] += 1
        finally:
            if tmp.exists():
                tmp.unlink()

    def _folders(self) -> dict[str, tuple[float, set[str]]]:
        """model id -> (last fetch time, sha256 of every file it links)."""
        out: dict[str, tuple[float, set[str]]] = {}
        if not self.root.is_dir():
            return out
        for folder in self.root.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            try:
                out[folder.name] = (folder.stat().st_mtime, {s[0] for s in _read_stamps(folder).values() if s})
            except FileNotFoundError:
                continue
        return out

    def _blobs(self) -> dict[str, os.stat_result]:
        out: dict[str, os.stat_result] = {}
        if not self.blobs.is_dir():
            return out
        for sub in self.blobs.iterdir():
            for p in sub.iterdir() if sub.is_dir() else ():
                if p.name.startswith(".") or p.name.endswith(".ok"):
                    continue
                try:
                    out[p.name] = p.stat()
                except FileNotFoundError:
                    continue
        return out

    def owned_bytes(self) -> int:
        """Bytes only this cache holds: each blob once, links into a local store free."""
        return sum(st.st_size for st in self._blobs().values() if st.st_nlink == 1)

    def trim(self, keep: str | None = None) -> int:
        """Remove least recently fetched folders until the owned bytes fit the budget; returns bytes freed."""
        if self.budget is None:
            return 0
        with self._lock:
            folders = self._folders()
            blobs = self._blobs()
            refs = Counter(sha for _, shas in folders.values() for sha in shas)
            pinned = set(self.pinned()) | ({keep} if keep else set())
            protected = set(self._active) | {sha for m in pinned if m in folders for sha in folders[m][1]}
            total = sum(st.st_size for st in blobs.values() if st.st_nlink == 1)
            freed = 0
            now = time.time()
            for sha, st in blobs.items():  # left behind by a crash or a removed folder
                if refs[sha] == 0 and sha not in protected and now - st.st_ctime > ORPHAN_AGE_S:
                    freed += self._drop_blob(sha, st)
            for model_id, (_, shas) in sorted(folders.items(), key=lambda kv: kv[1][0]):
                if total - freed <= self.budget:
                    break
                if model_id in pinned:
                    continue
                shutil.rmtree(self.folder(model_id), ignore_errors=True)  # mapped files stay valid until unmapped
                self.stats["evicted"] += 1
                for sha in shas:
                    refs[sha] -= 1
                    if refs[sha] <= 0 and sha not in protected and sha in blobs:
                        freed += self._drop_blob(sha, blobs[sha])
            return freed

    def _drop_blob(self, sha256: str, st: os.stat_result) -> int:
        blob = self.blob(sha256)
        blob.unlink(missing_ok=True)
        blob.with_name(blob.name + ".ok").unlink(missing_ok=True)
        return st.st_size if st.st_nlink == 1 else 0


def _stat_key(path: Path) -> list[int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return []
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _symlink(blob: Path, path: Path) -> None:
    """``path`` -> ``blob`` (relative, so the cache folder can move), replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, path.parent)
    if path.is_symlink() and os.readlink(path) == target:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _read_blob_stamp(blob: Path) -> list[int] | None:
    try:
        data = json.loads(blob.with_name(blob.name + ".ok").read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, list) else None


def _write_blob_stamp(blob: Path, key: list[int]) -> None:
    _write_json(blob.with_name(blob.name + ".ok"), key)


def _read_stamps(folder: Path) -> dict[str, list]:
    try:
        data = json.loads((folder / STAMPS).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the store shares the cache's filesystem (no bytes copied), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
