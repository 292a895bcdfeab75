"""Helpers of the reliability tests: resident memory of a process, crafted models, and a store to serve.

The crafted models are real artifacts that misbehave on purpose: a TorchScript
classifier that is slower than any sensible deadline, and a file that claims to be
a model but is a pickle whose payload would leave a marker file if it ever ran.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from shoal.store.base import ModelStore
from shoal.store.manifest import Manifest, describe_files
from shoal.trace.tiny import make_tiny_model

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` now (``/proc/PID/statm``, pages resident x page size)."""
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def settle_rss(pid: int, seconds: float = 1.0, step: float = 0.1) -> int:
    """The smallest RSS seen over ``seconds``: freed memory returns to the OS with a short lag."""
    low = rss_bytes(pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(step)
        low = min(low, rss_bytes(pid))
    return low


def store_folder(store: ModelStore) -> Path:
    return Path(store.uri.removeprefix("file://"))


def copy_store(src: ModelStore, ids: list[str], dst: Path) -> None:
    """Copy models (files and manifest) between local stores: cheaper than tracing them again."""
    for model_id in ids:
        shutil.copytree(store_folder(src) / model_id, dst / model_id)


def replace_artifact(store: ModelStore, base: Manifest, model_id: str, artifact: bytes, work: Path,
                     frozen: bool = False) -> Manifest:
    """Push ``base``'s files as ``model_id`` with ``artifact`` as its artifact and a manifest whose sha256 matches.

    This is what an attacker with write access to the store (but not to the code) can do:
    the integrity check passes, so only the loader stands between the file and the process.
    ``frozen``: the artifact holds its own weights (``model.pt``, no weights file), not a shared graph.
    """
    folder = work / model_id
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    src = store_folder(store) / base.id
    names = [n for n in base.files if not (frozen and n in (base.weights, base.artifact, base.family_graph))]
    for name in names:
        shutil.copyfile(src / name, folder / name)
    artifact_name = "model.pt" if frozen else base.artifact
    (folder / artifact_name).write_bytes(artifact)
    names = list(dict.fromkeys([*names, artifact_name]))
    update = {"id": model_id, "files": describe_files(folder, names), "artifact": artifact_name}
    if frozen:
        update.update(weights=None, tensors={}, family_graph=None)
    manifest = base.model_copy(update=update)
    store.push(folder, manifest)
    return manifest


# -- a model slower than the deadline --
class SlowClassifier(torch.nn.Module):
    """Takes the text graph's inputs and returns two logits per row after ``loops`` matrix products."""

    def __init__(self, loops: int) -> None:
        super().__init__()
        self.loops = loops
        self.weight = torch.nn.Parameter(torch.randn(192, 192) / 14.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = torch.ones(192, 192)
        for _ in range(self.loops):
            x = torch.tanh(x @ self.weight)
        rows = input_ids.shape[0]
        return x[0, :2].unsqueeze(0).expand(rows, 2) + attention_mask[:, :1].float() * 0.0


def loops_for(seconds: float) -> int:
    """Matrix products that take about ``seconds`` on one thread here (measured now, so a busy machine is slower)."""
    torch.set_num_threads(1)
    probe = torch.jit.script(SlowClassifier(200))
    ids = torch.ones(1, 8, dtype=torch.int64)
    probe(ids, ids)
    t0 = time.perf_counter()
    probe(ids, ids)
    per_loop = (time.perf_counter() - t0) / 200
    return max(50, int(seconds / per_loop))


def make_slow_model(store: ModelStore, base: Manifest, model_id: str, seconds: float, work: Path) -> Manifest:
    """A text classifier (``base``'s tokenizer and manifest) whose forward takes about ``seconds``."""
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(SlowClassifier(loops_for(seconds))), buf)
    return replace_artifact(store, base, model_id, buf.getvalue(), work, frozen=True)


# -- crafted pickles --
class Payload:
    """Unpickling this calls ``os.system("touch MARKER")``: the marker's existence proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def plain_pickle(marker: Path) -> bytes:
    """A bare pickle (what ``torch.save`` wrote before 1.6, or any ``pickle.dump``) with the payload."""
    return pickle.dumps({"state_dict": Payload(marker)}, protocol=2)


def torch_save_archive(marker: Path) -> bytes:
    """A ``torch.save`` zip archive whose data.pkl carries the payload (a tensor beside it, for realism)."""
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "hook": Payload(marker)}, buf)
    return buf.getvalue()


def poisoned_torchscript(real_artifact: bytes, marker: Path) -> bytes:
    """A genuine TorchScript archive with its data.pkl (the module's state) replaced by the payload pickle.

    Everything else (code/, constants.pkl, version) is the real model's, so the file passes
    every structural check; only the unpickler decides whether the payload runs.
    """
    src = zipfile.ZipFile(io.BytesIO(real_artifact))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = pickle.dumps(Payload(marker), protocol=2)
            dst.writestr(info, data)
    return out.getvalue()


def tiny_text_models(store: ModelStore, build_dir: Path) -> dict[str, Manifest]:
    """The tiny models the reliability tests serve (classification, embedding, QA), traced once."""
    kinds = {"tiny-a": "classification", "tiny-b": "embedding", "tiny-qa": "question-answering"}
    return {mid: make_tiny_model(store, mid, task=task, seed=i, build_dir=build_dir)
            for i, (mid, task) in enumerate(kinds.items())}


@dataclass
class ReliabilityStore:
    """A local store of tiny models plus crafted bad ones; ``markers`` are files the pickle payloads would create."""

    store: ModelStore
    root: Path
    markers: dict[str, Path]
    slow_s: float

    @property
    def uri(self) -> str:
        return self.store.uri


GOOD = ["tiny-a", "tiny-b", "tiny-qa", "det"]
EVIL = ["evil-pickle", "evil-torchsave", "evil-torchscript"]


def build_reliability_store(root: Path, slow_s: float = 2.5) -> ReliabilityStore:
    """tiny-a/-b/-qa (text), det (detector), broken (sha256 mismatch), slow, and three crafted pickles."""
    from shoal.store import open_store
    from tests.detector_support import make_tiny_detector

    store = open_store(f"file://{root / 'store'}")
    work = root / "work"
    base = tiny_text_models(store, root / "build")["tiny-a"]
    make_tiny_detector(store, "det", work / "det-src")
    real = (store_folder(store) / "tiny-a" / base.artifact).read_bytes()
    markers = {name: root / f"pwned-{name}" for name in EVIL}
    crafted = {"evil-pickle": plain_pickle(markers["evil-pickle"]),
               "evil-torchsave": torch_save_archive(markers["evil-torchsave"]),
               "evil-torchscript": poisoned_torchscript(real, markers["evil-torchscript"])}
    for name, data in crafted.items():
        replace_artifact(store, base, name, data, work)
    # bytes of its own (the store keeps a content once: corrupting tiny-a's shared bytes would break tiny-a too)
    replace_artifact(store, base, "broken", real + b"broken", work)
    with open(store_folder(store) / "broken" / base.artifact, "r+b") as fh:  # after the manifest: sha256 mismatch
        fh.seek(200)
        fh.write(b"tampered")
    make_slow_model(store, base, "slow", slow_s, work)
    return ReliabilityStore(store, root, markers, slow_s)


def serve(uri: str, state: Path, *args: str, env: dict[str, str] | None = None, wait_ready: bool = True,
          timeout_s: float = 90.0) -> "ServerProcess":
    """A real `shoal serve` on a free loopback port, with its state (async jobs) under ``state``."""
    from tests.server_fixtures import ServerProcess

    full_env = {"SHOAL_STATE_DIR": str(state), **(env or {})}
    return ServerProcess(["--store", uri, *args], env=full_env).start(wait_ready=wait_ready, timeout_s=timeout_s)
