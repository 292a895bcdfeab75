"""Where shoal keeps what it can rebuild, and how that place stays bounded.

Why one module: build intermediates used to land in ``.shoal/build`` under whatever folder a
command ran from (gigabytes, hidden, never cleaned) and the S3 cache in ``.shoal/cache`` beside
it. Everything rebuildable now lives under one root the user can find, move and bound:

- ``SHOAL_CACHE_DIR`` (or ``cache_dir`` in the ``SHOAL_CONFIG`` file), else the platform's user
  cache directory (``$XDG_CACHE_HOME/shoal``, normally ``~/.cache/shoal`` on Linux;
  ``~/Library/Caches/shoal`` on macOS).
- ``<root>/<bucket>/...`` and ``<root>/local/...``: the store's verified disk cache (the server).
- ``<root>/trace_build/<model>/``: trace intermediates. A model's folder is removed once its
  artifact is in the store; what must stay (a detector's unfrozen trace, which ``shoal models
  synth`` reads) is kept, and the whole folder is held under ``build_cache_budget``.

The build folder's name has an underscore so that it can never be an S3 bucket's name.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import platformdirs

ENV = "SHOAL_CACHE_DIR"
BUILD = "trace_build"


def cache_root() -> Path:
    """``SHOAL_CACHE_DIR``, else the platform's per-user cache directory for shoal."""
    given = os.environ.get(ENV, "").strip()
    if given:
        return Path(given).expanduser()
    return Path(platformdirs.user_cache_dir("shoal", appauthor=False))


def build_dir(root: Path | None = None) -> Path:
    """Trace intermediates, under ``root`` (the settings' ``cache_dir``) or the default cache root."""
    return (root if root is not None else cache_root()) / BUILD


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size
    return total


def keep_only(folder: Path, names: set[str]) -> None:
    """Remove everything in ``folder`` but ``names``: once an artifact is in the store, its copies are waste."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name in names:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def prune(folder: Path, budget: int, keep: tuple[str, ...] = ()) -> list[Path]:
    """Remove the least recently written entries of ``folder`` until it holds at most ``budget`` bytes.

    ``keep`` names entries never removed (the model being traced right now). Returns what was removed.
    """
    if not folder.is_dir():
        return []
    entries = []
    for entry in folder.iterdir():
        if entry.name in keep:
            continue
        try:
            entries.append((entry.stat().st_mtime, entry))
        except OSError:
            continue
    sizes = {entry: tree_bytes(entry) if entry.is_dir() else entry.stat().st_size for _, entry in entries}
    total = sum(sizes.values()) + sum(tree_bytes(folder / k) for k in keep if (folder / k).exists())
    removed = []
    for _, entry in sorted(entries, key=lambda e: e[0]):
        if total <= budget:
            break
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        total -= sizes[entry]
        removed.append(entry)
    return removed
