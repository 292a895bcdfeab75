"""The one way the server turns an artifact file into a module: TorchScript only, never a pickle.

``torch.jit.load`` reads a TorchScript zip with TorchScript's own unpickler, which
resolves names only to TorchScript types and tensors: a ``GLOBAL os.system`` in a
crafted ``data.pkl`` is an unknown type, not a call (tests/test_supply_chain.py shows
the payload never runs). We still look at the file first, so a plain pickle or a
``torch.save`` archive is refused with a sentence that says what it is, instead of a
zip-reader error.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

PICKLE_PROTO = 0x80  # the first byte of every pickle of protocol 2 or later


class ArtifactRefused(RuntimeError):
    """The file is not a TorchScript archive; nothing in it was unpickled or run."""


def check_torchscript(path: Path) -> None:
    """Raise ArtifactRefused unless ``path`` is a zip laid out as TorchScript (code/ and constants.pkl)."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    if not zipfile.is_zipfile(path):
        what = "a Python pickle" if head[:1] == bytes([PICKLE_PROTO]) else "not a zip archive"
        raise ArtifactRefused(f"{path.name} is {what}, not a TorchScript archive: refused (shoal loads only "
                              "TorchScript and safetensors artifacts, never pickles)")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    has_code = any("/code/" in n for n in names)
    has_constants = any(n.endswith("/constants.pkl") for n in names)
    if not (has_code and has_constants):
        raise ArtifactRefused(f"{path.name} is a torch.save() archive of pickled Python objects, not TorchScript: "
                              "refused (export it with torch.jit.trace/script and torch.jit.save)")


def load_torchscript(path: Path, map_location: str, extra_files: dict[str, Any] | None = None) -> Any:
    """The TorchScript module in ``path`` (checked first), in eval mode; ``extra_files`` is filled in."""
    import torch

    check_torchscript(path)
    try:
        module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra_files or {})
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ArtifactRefused(f"{path.name} is not a loadable TorchScript archive: "
                              f"{lines[0] if lines else type(exc).__name__}") from None
    return module.eval()
