"""The local disk tier between the store and memory: verified model files, trusted across restarts.

Why: a swap-in must cost what mapping the weights costs, so the sha256 of a file is
checked once, when it enters this cache, not on every load. Each model folder keeps a
stamp per file (sha256, inode, size, mtime, ctime) written after the check; a later fetch
trusts the file while its stat still matches the stamp. Any write, truncate, chmod or
rename-over changes ctime (which no unprivileged process can set back), so a tampered or
corrupted file is hashed again, found wrong, removed and fetched anew: never served.

Files enter through a temp file renamed into place, so a crash never leaves a half file
that looks complete. From a local folder store they are hard links (no copy, no disk),
from S3 downloads. ``budget_bytes`` bounds the bytes only this cache holds (files whose
link count is 1); the least recently fetched model folders not in ``pinned`` go first.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from shoal.errors import IntegrityError
from shoal.store.manifest import MANIFEST_NAME, Manifest, sha256_file

STAMPS = ".verified.json"
Fill = Callable[[str, Path], None]  # (file name in the model, temp path to write) -> None


class VerifiedCache:
    def __init__(self, root: Path, budget_bytes: int | None = None) -> None:
        self.root = root
        self.budget = budget_bytes
        self.pinned: Callable[[], set[str]] = set  # model ids that must stay (resident, loading)
        self._lock = threading.Lock()
        self.stats = {"trusted": 0, "hashed": 0, "filled": 0, "corrupt": 0, "evicted": 0}

    def folder(self, model_id: str) -> Path:
        return self.root / model_id

    def ensure(self, manifest: Manifest, fill: Fill) -> Path:
        """The model's folder with every file present and verified, filling what is missing or wrong."""
        folder = self.folder(manifest.id)
        folder.mkdir(parents=True, exist_ok=True)
        stamps = _read_stamps(folder)
        changed = False
        for name, entry in manifest.files.items():
            path = folder / name
            stamp = stamps.get(name)
            if stamp is not None and stamp[0] == entry.sha256 and _stat_key(path) == stamp[1:]:
                self.stats["trusted"] += 1
                continue
            changed = True
            if path.is_file() and path.stat().st_size == entry.size:
                self.stats["hashed"] += 1
                if sha256_file(path) == entry.sha256:
                    stamps[name] = [entry.sha256, *_stat_key(path)]
                    continue
                self.stats["corrupt"] += 1
            stamps.pop(name, None)
            self._fill_one(manifest.id, name, entry.sha256, path, fill)
            stamps[name] = [entry.sha256, *_stat_key(path)]
        if changed:
            _write_json(folder / STAMPS, stamps)
            _write_json(folder / MANIFEST_NAME, json.loads(manifest.model_dump_json()))
        os.utime(folder)  # LRU order: the newest fetch last
        if changed and self.budget is not None:
            self.trim(keep=manifest.id)
        return folder

    def _fill_one(self, model_id: str, name: str, sha256: str, path: Path, fill: Fill) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            tmp.unlink()  # fill creates it (a hard link needs the name free)
            fill(name, tmp)
            if sha256_file(tmp) != sha256:
                raise IntegrityError(f"{model_id}: {name} from the store does not match the sha256 in its manifest")
            os.replace(tmp, path)
            self.stats["filled"] += 1
        finally:
            if tmp.exists():
                tmp.unlink()

    def owned_bytes(self) -> dict[str, tuple[float, int]]:
        """model id -> (last fetch time, bytes only this cache holds)."""
        out: dict[str, tuple[float, int]] = {}
        if not self.root.is_dir():
            return out
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            size = 0
            for f in folder.rglob("*"):
                try:
                    st = f.lstat()
                except FileNotFoundError:
                    continue
                if f.is_file() and st.st_nlink == 1:
                    size += st.st_size
            try:
                out[folder.name] = (folder.stat().st_mtime, size)
            except FileNotFoundError:
                continue
        return out

    def trim(self, keep: str | None = None) -> int:
        """Remove least recently fetched folders until the owned bytes fit the budget; returns bytes freed."""
        if self.budget is None:
            return 0
        with self._lock:
            usage = self.owned_bytes()
            total = sum(size for _, size in usage.values())
            freed = 0
            pinned = set(self.pinned()) | ({keep} if keep else set())
            for model_id, (_, size) in sorted(usage.items(), key=lambda kv: kv[1][0]):
                if total - freed <= self.budget:
                    break
                if model_id in pinned or size == 0:
                    continue
                shutil.rmtree(self.folder(model_id), ignore_errors=True)  # mapped files stay valid until unmapped
                freed += size
                self.stats["evicted"] += 1
            return freed


def _stat_key(path: Path) -> list[int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return []
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


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
