"""Writing rendered manifests to a folder, and applying them when a cluster answers.

Why replace the folder whole: `kubectl apply -f DIR` applies every file in it, so a file
left from an older plan (a server that no longer exists) would come back to life. The
folder is built beside the target and swapped in, and a folder that shoal did not write
is never touched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from shoal.errors import ShoalError, UsageError

MARKER = ".shoal-render.json"

_Base = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_Base):  # type: ignore[misc, valid-type]
    """Block style for multi-line strings (Corefile, plan.json), so the files read as written;
    no YAML anchors, which some tools (and readers) do not expect in manifests."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_all(docs: list[dict]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1 << 16)


def dump(doc: dict) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1 << 16)


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UsageError(f"output folder {out} is not empty and was not written by shoal deploy: "
                         "pass another -o, or empty it")


def write_tree(out: Path, files: dict[str, str], summary: dict) -> None:
    """Write ``files`` (relative path -> text) as the whole content of ``out``."""
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        for rel, text in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (staging / MARKER).write_text(json.dumps({**summary, "files": sorted(files)}, indent=1) + "\n")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{staging.name}")
            out.rename(old)
        staging.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _kubectl(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ShoalError("kubectl is not installed: manifests were written but nothing was applied") from None
    except subprocess.TimeoutExpired:
        raise ShoalError(f"kubectl {args[0]} timed out after {timeout:.0f} s: nothing was applied") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def cluster_reachable(timeout: float = 15.0) -> None:
    """Raise ShoalError (one line) unless `kubectl version` gets an answer from an API server."""
    result = _kubectl(["version", "-o", "json", "--request-timeout=10s"], timeout)
    try:
        server = json.loads(result.stdout or "{}").get("serverVersion")
    except json.JSONDecodeError:
        server = None
    if result.returncode != 0 or not server:
        raise ShoalError(f"no Kubernetes cluster answers kubectl ({_last_line(result.stderr)}): manifests were "
                         "written but nothing was applied")


def apply(out: Path, timeout: float = 300.0) -> list[str]:
    """`kubectl apply` the add-ons (kube-system) first, then the plan's objects; returns kubectl's lines."""
    cluster_reachable()
    lines: list[str] = []
    for folder in ([out / "addons"] if (out / "addons").is_dir() else []) + [out]:
        result = _kubectl(["apply", "-f", str(folder)], timeout)
        if result.returncode != 0:
            raise ShoalError(f"kubectl apply -f {folder} failed: {_last_line(result.stderr)}")
        lines.extend(result.stdout.splitlines())
    return lines
